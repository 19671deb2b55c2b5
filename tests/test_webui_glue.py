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
def webui(monkeypatch):
    """Load scripts/medical_lora.py the way the WebUI does, against the stand-in modules."""
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN))
    fake_gradio = types.ModuleType("gradio")
    fake_gradio.Dropdown = type("Dropdown", (), {})
    monkeypatch.setitem(sys.modules, "gradio", fake_gradio)
    shared = importlib.import_module("modules.shared")
    spec = importlib.util.spec_from_file_location("medical_lora", ROOT / "scripts" / "medical_lora.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return shared, fake_gradio


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
    monkeypatch.setattr(shared.cmd_opts, "lora_dir", str(tmp_path / "Lora"))
    monkeypatch.setattr(shared.cmd_opts, "api_auth", "dpo:s3cret")
    monkeypatch.setitem(shared.opts.data, "medical_lora_home", str(tmp_path / "home"))
    monkeypatch.setitem(shared.opts.data, "medical_lora_delete_users", "dpo")
    app = FastAPI()
    callbacks.app_started_callback(None, app)
    client = TestClient(app)
    assert client.get("/medical-lora/v1/adapters").status_code == 401
    assert client.get("/medical-lora/v1/adapters", auth=("dpo", "wrong")).status_code == 401
    response = client.get("/medical-lora/v1/adapters", auth=("dpo", "s3cret"))
    assert response.status_code == 200 and response.json() == []
    assert (tmp_path / "home" / "audit.jsonl").is_file()  # the refusals were audited in the configured home
