"""The WebUI glue registers its settings, and the settings turn into validated configs."""

import importlib.util
import pathlib
import sys
import types

import pytest

from lib_lora_train.errors import ConfigError
from lib_lora_train.settings import HOST_SETTINGS, home_from_options, ingest_config_from_options

ROOT = pathlib.Path(__file__).resolve().parent.parent
STANDIN = ROOT / "tests" / "webui_standin"


@pytest.fixture
def webui(monkeypatch, tmp_path):
    """Load scripts/medical_lora.py the way the WebUI does, against the stand-in modules, with the
    Lora folder and the data home in ``tmp_path`` (``Lora/``, ``home/``)."""
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN))
    if importlib.util.find_spec("gradio") is None:  # the settings only need gr.Dropdown
        fake_gradio = types.ModuleType("gradio")
        fake_gradio.Dropdown = type("Dropdown", (), {})
        monkeypatch.setitem(sys.modules, "gradio", fake_gradio)
    gradio = importlib.import_module("gradio")
    shared = importlib.import_module("modules.shared")
    monkeypatch.setattr(shared.cmd_opts, "lora_dir", str(tmp_path / "Lora"))
    monkeypatch.setitem(shared.opts.data, "medical_lora_home", str(tmp_path / "home"))
    callbacks = importlib.import_module("modules.script_callbacks")
    monkeypatch.setattr(callbacks, "callbacks_app_started", [])
    monkeypatch.setattr(callbacks, "callbacks_ui_tabs", [])
    spec = importlib.util.spec_from_file_location("medical_lora", ROOT / "scripts" / "medical_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shared.extension = module.extension  # for the tests only
    return shared, gradio


def test_settings_are_registered_in_their_section(webui):
    shared, gradio = webui
    for setting in HOST_SETTINGS:
        option = shared.options_templates[setting.key]
        assert option.default == setting.default
        assert option.section == ("medical_lora", "Medical LoRA (DICOM)") and option.category_id == "training"
    window = shared.options_templates["medical_lora_window"]
    assert window.component is gradio.Dropdown and "lung" in window.component_args["choices"]


def test_options_become_home_and_config(tmp_path):
    options = {"medical_lora_home": str(tmp_path / "h"), "medical_lora_window": "bone"}
    assert home_from_options(options, {}).root == (tmp_path / "h").resolve()
    assert home_from_options({}, {"MEDICAL_LORA_HOME": str(tmp_path / "e")}).root == (tmp_path / "e").resolve()
    config = ingest_config_from_options(options, trigger_word="mdl")
    assert config.window == "bone" and config.trigger_word == "mdl"
    with pytest.raises(ConfigError, match="window="):
        ingest_config_from_options({"medical_lora_window": "lungs"})


@pytest.mark.parametrize("value, days", [(90, 90), ("30", 30), (0, 365), ("soon", 365), (None, 365)])
def test_day_settings_fall_back_to_their_default(value, days):
    from lib_lora_train.settings import days_setting

    assert days_setting({"medical_lora_unused_days": value}, "medical_lora_unused_days") == days


def test_library_imports_without_the_webui_and_stays_light():
    code = ("import sys, lib_lora_train, lib_lora_train.cli, lib_lora_train.settings;"
            "heavy = [m for m in ('torch', 'pydicom', 'numpy', 'modules', 'gradio', 'PIL') if m in sys.modules];"
            "print(heavy)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_named_dl_on_the_path():
    # With python-gdcm installed, `import pydicom` breaks if a folder or module `dl` is importable.
    assert not any((folder / "dl").exists() or (folder / "dl.py").exists()
                   for folder in (ROOT, ROOT / "lib_lora_train", ROOT / "scripts"))


def test_scripts_stay_thin():
    for script in (ROOT / "scripts").glob("*.py"):
        lines = [line for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert len(lines) < 60, f"{script.name} holds logic; move it into lib_lora_train"


def test_app_start_mounts_the_api_with_webui_credentials(webui, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    shared, _ = webui
    callbacks = importlib.import_module("modules.script_callbacks")
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "dpo:s3cret")
    monkeypatch.setitem(shared.opts.data, "medical_lora_delete_users", "dpo")
    app = FastAPI()
    callbacks.app_started_callback(None, app)
    client = TestClient(app)
    assert client.get("/medical-lora/v1/adapters").status_code == 401
    assert client.get("/medical-lora/v1/adapters", auth=("dpo", "wrong")).status_code == 401
    response = client.get("/medical-lora/v1/adapters", auth=("dpo", "s3cret"))
    assert response.status_code == 200 and response.json() == []
    assert (tmp_path / "home" / "audit.jsonl").is_file()  # the refusals were audited in the configured home


def test_the_tab_and_the_api_share_one_job_queue(webui, monkeypatch):
    pytest.importorskip("gradio")
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    shared, _ = webui
    callbacks = importlib.import_module("modules.script_callbacks")
    monkeypatch.setitem(shared.opts.data, "medical_lora_train_users", "alice, bob")
    [(blocks, title, elem_id)] = callbacks.ui_tabs_callback()
    assert (title, elem_id) == ("Medical LoRA", "medical_lora")
    ids = {component["props"].get("elem_id") for component in blocks.config["components"]}
    assert {"medlora_files", "medlora_start", "medlora_adapters"} <= ids
    assert "medlora_gen_prompt" not in ids  # inside the WebUI, txt2img is the generate panel
    context = shared.extension.ui_context()
    assert context.train_users == ("alice", "bob") and context.host_name == "webui"
    assert not context.auth_enabled and any("Access control is off" in n for n in context.current_notices())
    monkeypatch.setattr(shared.cmd_opts, "gradio_auth", "alice:pw")
    assert shared.extension.ui_context().auth_enabled
    callbacks.app_started_callback(None, FastAPI())  # mounts the API on the same state
    assert shared.extension.state.jobs is context.state.jobs


def test_start_up_problems_reach_the_tab(webui):
    shared, _ = webui
    extension = shared.extension
    home = extension.state.home
    home.adapters_dir.mkdir(parents=True, exist_ok=True)
    (home.adapters_dir / "stray.safetensors").write_bytes(b"not registered")
    from lib_lora_train.webui.app import start_maintenance

    start_maintenance(extension.state, on_problems=extension.startup_problems.extend).join(timeout=60)
    notes = extension.ui_context().current_notices()
    assert any(note.startswith("Registry check: orphan_file") for note in notes), notes


def test_the_preview_renders_through_the_webuis_txt2img_under_the_queue_lock(webui):
    """The contract with ``processing.process_images``: one txt2img, not saved, lock and state held."""
    from lib_lora_train.webui.extension import WebUIPreview

    shared, _ = webui
    seen = {}

    class Txt2Img:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.closed = False

        def close(self):
            seen["closed"] = True

    def process_images(p):
        seen["locked"] = lock.locked()
        seen["job"] = shared.state.job
        return types.SimpleNamespace(images=["image"])

    call_queue = importlib.import_module("modules.call_queue")
    lock = call_queue.FIFOLock()  # the WebUI's lock type: acquire() takes no timeout
    modules = types.SimpleNamespace(shared=shared, call_queue=types.SimpleNamespace(queue_lock=lock),
                                    processing=types.SimpleNamespace(StableDiffusionProcessingTxt2Img=Txt2Img,
                                                                     process_images=process_images))
    assert WebUIPreview(modules)("a ct scan <lora:chest_ct:0.7>", 7) == "image"
    assert seen["prompt"] == "a ct scan <lora:chest_ct:0.7>" and seen["seed"] == 7
    assert seen["do_not_save_samples"] and seen["do_not_save_grid"] and seen["closed"]
    assert seen["locked"] and seen["job"] == "medical_lora_preview" and not lock.locked()


def test_the_preview_waits_for_a_running_job_then_says_the_model_is_busy(webui, monkeypatch):
    from lib_lora_train.errors import ConfigError
    from lib_lora_train.ui import generate
    from lib_lora_train.webui.extension import WebUIPreview

    shared, _ = webui
    call_queue = importlib.import_module("modules.call_queue")
    lock = call_queue.FIFOLock()
    lock.acquire()  # a training job holds the queue
    monkeypatch.setattr(generate, "LOCK_WAIT_S", 0.3)
    modules = types.SimpleNamespace(shared=shared, call_queue=types.SimpleNamespace(queue_lock=lock),
                                    processing=None)
    with pytest.raises(ConfigError, match="the model is busy"):
        with generate.held(lock):
            pass
    with pytest.raises(ConfigError, match="the model is busy"):
        WebUIPreview(modules, training_busy=lambda: True)("a ct scan", 1)


@pytest.mark.parametrize("keep, users, stays", [(True, 1, True), (False, 1, False), (False, 2, True)])
def test_the_keep_datasets_setting_decides_whether_training_data_stays(webui, monkeypatch, keep, users,
                                                                       stays):
    """Off, the dataset goes once registered, unless another waiting job still trains on it."""
    from lib_lora_train.dicom.pseudonym import Pseudonymizer
    from lib_lora_train.registry import Registry
    from lib_lora_train.webui import app
    from tests.registry.conftest import register, write_adapter, write_dataset

    shared, _ = webui
    monkeypatch.setitem(shared.opts.data, "medical_lora_keep_datasets", keep)
    published = []
    monkeypatch.setattr(app, "_publish", lambda webui, lora_dir, exported: published.append(exported.name))
    state = shared.extension.state
    folder = state.home.datasets_dir / "ds-1"
    manifest = write_dataset(folder, "ds-1", [0], Pseudonymizer(b"k" * 32))
    exported = write_adapter(state.home.adapters_dir / "chest", "chest")
    with Registry(state.home) as registry:
        record = register(registry, exported, manifest, folder)
    monkeypatch.setattr(state.jobs, "dataset_users", lambda path: users if str(path) == str(folder) else 0)
    state.after_register(exported, record)
    assert published == ["chest"] and folder.exists() == stays


def test_the_preview_waits_for_an_ordinary_generation(webui, monkeypatch):
    """Only a training job makes the preview give up; a generation ahead of it is waited for."""
    import threading
    import time

    from lib_lora_train.webui.extension import WebUIPreview
    from lib_lora_train.ui import generate

    shared, _ = webui
    lock = importlib.import_module("modules.call_queue").FIFOLock()
    lock.acquire()
    rendered = []

    class Txt2Img:
        def __init__(self, **kwargs):
            pass

        def close(self):
            pass

    modules = types.SimpleNamespace(
        shared=shared, call_queue=types.SimpleNamespace(queue_lock=lock),
        processing=types.SimpleNamespace(StableDiffusionProcessingTxt2Img=Txt2Img,
                                         process_images=lambda p: types.SimpleNamespace(images=["image"])))
    preview = WebUIPreview(modules, training_busy=lambda: False)
    monkeypatch.setattr(generate, "LOCK_WAIT_S", 0.2)
    waiting = threading.Thread(target=lambda: rendered.append(preview("a ct scan", 1)))
    waiting.start()
    time.sleep(1.0)  # a generation runs longer than the training wait
    assert waiting.is_alive() and rendered == []
    lock.release()
    waiting.join(timeout=10)
    assert rendered == ["image"]


def test_the_api_follows_the_access_settings_after_a_ui_reload(webui, monkeypatch):
    shared, _ = webui
    monkeypatch.setitem(shared.opts.data, "medical_lora_api_local_without_auth", True)
    extension = shared.extension
    assert extension.state.auth.allow_unauthenticated_local
    monkeypatch.setitem(shared.opts.data, "medical_lora_api_local_without_auth", False)
    monkeypatch.setitem(shared.opts.data, "medical_lora_delete_users", "dpo")
    extension.ui_context()  # what "Reload UI" runs
    assert not extension.state.auth.allow_unauthenticated_local and extension.state.auth.delete_users == ("dpo",)
