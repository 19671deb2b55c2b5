"""publish_adapter / forget_adapter against the WebUI 1.10.1 stand-ins (tests/webui_standin)."""

import importlib
import json
import pathlib
import sys
import types

import pytest
import torch

from lib_lora_train.errors import CaptionPHIError
from lib_lora_train.registry.errors import ErasureError
from lib_lora_train.webui import lora_bridge
from tests.registry.conftest import write_adapter

STANDIN = pathlib.Path(__file__).resolve().parent.parent / "webui_standin"
STANDIN_ROOTS = ("modules", "ldm", "networks", "addnet_model_util")
STANDIN_MODULES = ("modules.shared", "modules.cache", "modules.hashes", "modules.processing", "networks",
                   "addnet_model_util")
LAYER = "diffusion_model_attn_to_q"


def _is_standin(name):
    return name.split(".", 1)[0] in STANDIN_ROOTS


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """Fresh stand-in modules per test (``sys.modules`` restored after), Lora folder in tmp."""
    saved = {name: module for name, module in sys.modules.items() if _is_standin(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(STANDIN))
    try:
        mods = types.SimpleNamespace(**{name.rsplit(".", 1)[-1]: importlib.import_module(name)
                                        for name in STANDIN_MODULES})
        mods.shared.cmd_opts.lora_dir = str(tmp_path / "Lora")
        mods.shared.cmd_opts.lyco_dir_backcompat = str(tmp_path / "LyCORIS")
        mods.shared.config_filename = str(tmp_path / "config.json")
        mods.addnet_model_util.lora_models_dir = str(tmp_path / "addnet-models")
        mods.addnet_model_util.shared = mods.shared
        mods.addnet_calls = []
        real_update = mods.addnet_model_util.update_models
        monkeypatch.setattr(mods.addnet_model_util, "update_models",
                            lambda: (mods.addnet_calls.append("update_models"), real_update()))
        mods.lora_dir = tmp_path / "Lora"
        yield mods
    finally:
        sys.path.remove(str(STANDIN))
        for name in [name for name in sys.modules if _is_standin(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _publish(webui, exported, **overrides):
    values = {"activation_text": "mdlchest", "preferred_weight": 0.7, "description": "Chest CT style (teaching)",
              "networks_module": webui.networks, "addnet": webui.addnet_model_util, "shared_module": webui.shared}
    values.update(overrides)
    return lora_bridge.publish_adapter(exported, webui.lora_dir, **values)


def _forget(webui, name="chest"):
    return lora_bridge.forget_adapter(name, webui.lora_dir, networks_module=webui.networks, shared_module=webui.shared,
                                      processing_module=webui.processing, cache_module=webui.cache,
                                      addnet=webui.addnet_model_util)


def _merge(webui, name):
    """What a generation with <lora:NAME:1> leaves in v1.10.1: a merged Linear and the network in memory."""
    linear = torch.nn.Linear(8, 8)
    root = torch.nn.Module()
    root.diffusion_model_attn_to_q = linear
    linear.network_layer_name = LAYER
    webui.shared.sd_model = types.SimpleNamespace(network_layer_mapping={LAYER: linear})
    on_disk = webui.networks.available_networks[name]
    net = webui.networks.Network(name, {LAYER: webui.networks.NetworkModuleDelta(torch.full((8, 8), 0.25))},
                                 network_on_disk=on_disk)
    webui.networks.loaded_networks.append(net)
    webui.networks.networks_in_memory[name] = net
    on_disk.read_hash()
    original = linear.weight.detach().clone(), linear.bias.detach().clone()
    with torch.no_grad():  # generation runs under no_grad/inference mode
        webui.networks.network_apply_weights(linear)
    assert not torch.equal(linear.weight, original[0])
    return linear, original


def test_publish_makes_adapter_visible(webui, tmp_path):
    exported = write_adapter(tmp_path / "export", "chest")
    path = _publish(webui, exported)
    assert path == webui.lora_dir / "chest.safetensors" and path.read_bytes() == exported.path.read_bytes()
    assert "chest" in webui.networks.available_networks and "chest" in webui.networks.available_network_aliases
    sidecar = json.loads((webui.lora_dir / "chest.json").read_text())
    assert sidecar["activation text"] == "mdlchest" and sidecar["preferred weight"] == 0.7
    assert sidecar["description"] == "Chest CT style (teaching)" and "sd version" not in sidecar
    setting = webui.shared.opts.data[lora_bridge.ADDNET_PATH_SETTING]
    assert lora_bridge._split_path_list(setting) == [str(webui.lora_dir)]
    assert json.loads(pathlib.Path(webui.shared.config_filename).read_text())[lora_bridge.ADDNET_PATH_SETTING]
    assert any(name.startswith("chest(") for name in webui.addnet_model_util.lora_models)
    _publish(webui, exported)  # same bytes again: fine, and the folder is not added twice
    assert webui.shared.opts.data[lora_bridge.ADDNET_PATH_SETTING] == setting


def test_publish_refuses_collision_and_personal_data(webui, tmp_path):
    webui.lora_dir.mkdir(parents=True)
    other = write_adapter(tmp_path / "other", "chest", seed=5)
    (webui.lora_dir / "chest.safetensors").write_bytes(other.path.read_bytes())
    exported = write_adapter(tmp_path / "export", "chest")
    with pytest.raises(lora_bridge.PublishError, match="already has a different model"):
        _publish(webui, exported)
    exported2 = write_adapter(tmp_path / "export2", "knee")
    with pytest.raises(CaptionPHIError):
        _publish(webui, exported2, activation_text="mdl Doe^John")
    with pytest.raises(CaptionPHIError):
        _publish(webui, exported2, description="scanned 2023-04-01")
    assert not (webui.lora_dir / "knee.safetensors").exists()


def test_forget_restores_weights_and_removes_everything(webui, tmp_path):
    _publish(webui, write_adapter(tmp_path / "export", "chest"))
    _publish(webui, write_adapter(tmp_path / "export-b", "knee", seed=3))
    for suffix in (".preview.png", ".png", ".txt", ".civitai.info", ".description.txt"):
        (webui.lora_dir / f"chest{suffix}").write_bytes(b"sidecar")
    linear, (weight, bias) = _merge(webui, "chest")
    webui.networks.NetworkOnDisk("chest", str(webui.lora_dir / "chest.safetensors"))  # metadata cache entry
    webui.processing.StableDiffusionProcessing.cached_c = ["key", "cond"]
    webui.processing.StableDiffusionProcessing.cached_uc = ["key", "uncond"]
    webui.processing.StableDiffusionProcessingTxt2Img.cached_hr_c = ["key", "cond"]
    webui.addnet_calls.clear()

    report = _forget(webui)

    assert torch.equal(linear.weight, weight) and torch.equal(linear.bias, bias)
    assert linear.network_weights_backup is None and linear.network_current_names == ()
    assert report["layers_restored"] == 1 and report["unloaded"] == ["chest"]
    assert webui.networks.loaded_networks == [] and webui.networks.networks_in_memory == {}
    for table in (webui.networks.available_networks, webui.networks.available_network_aliases):
        assert "chest" not in table and "knee" in table
    assert all(entry.name != "chest" for entry in webui.networks.available_network_hash_lookup.values())
    assert sorted(p.name for p in webui.lora_dir.iterdir()) == ["knee.json", "knee.safetensors"]
    assert "chest.safetensors" in report["files_removed"] and "chest.preview.png" in report["files_removed"]
    assert all(not name.startswith("/") for name in report["files_removed"])
    for subsection in ("safetensors-metadata", "hashes-addnet"):
        assert "lora/chest" not in webui.cache.cache(subsection)
    assert "lora/knee" in webui.cache.cache("safetensors-metadata")
    assert webui.processing.StableDiffusionProcessing.cached_c == [None, None]
    assert webui.processing.StableDiffusionProcessing.cached_uc == [None, None]
    assert webui.processing.StableDiffusionProcessingTxt2Img.cached_hr_c == [None, None]
    assert webui.addnet_calls == ["update_models"]
    assert "chest" not in webui.addnet_model_util.lora_model_names
    assert all(not name.startswith("chest(") for name in webui.addnet_model_util.lora_models)
    assert report["nothing_to_do"] is False

    again = _forget(webui)
    assert again["nothing_to_do"] is True and again["files_removed"] == [] and again["layers_restored"] == 0


def test_forge_caches_cleared(webui, tmp_path):
    _publish(webui, write_adapter(tmp_path / "export", "chest"))
    calls = []
    webui.networks.load_lora_state_dict = types.SimpleNamespace(cache_clear=lambda: calls.append("clear"))
    original = types.SimpleNamespace(unet="unet0", clip="clip0")
    path = webui.networks.available_networks["chest"].filename
    webui.shared.sd_model = types.SimpleNamespace(
        current_lora_hash=str([[path, 1.0, 1.0, False]]), forge_objects_original=original,
        forge_objects=types.SimpleNamespace(unet="patched", clip="patched"))
    report = _forget(webui)
    assert calls == ["clear"] and report["forge"] is True
    assert webui.shared.sd_model.current_lora_hash == "[]" and webui.shared.sd_model.forge_objects.unet == "unet0"


def test_registry_delete_with_hook(webui, tmp_path):
    from lib_lora_train.dicom.pseudonym import Pseudonymizer
    from lib_lora_train.home import DataHome
    from lib_lora_train.registry import Registry
    from tests.registry.conftest import register, write_dataset

    home = DataHome(tmp_path / "home").ensure()
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], Pseudonymizer(bytes(range(32))))
    exported = write_adapter(home.adapters_dir / "chest", "chest")
    _publish(webui, exported)
    _merge(webui, "chest")
    reports = []
    hook = lora_bridge.webui_delete_hook(webui.lora_dir, networks_module=webui.networks, shared_module=webui.shared,
                                         processing_module=webui.processing, cache_module=webui.cache,
                                         addnet=webui.addnet_model_util, reports=reports)
    with Registry(home) as registry:
        register(registry, exported, manifest, home.datasets_dir / "ds-a")
        receipt = registry.delete("chest", actor="alice", reason="no longer needed", hooks=(hook,))
        assert registry.get("chest").status == "deleted" and receipt["status"] == "deleted"
    assert reports and "chest.safetensors" in reports[0]["files_removed"]
    assert not any(webui.lora_dir.iterdir()) and webui.networks.available_networks == {}
    assert webui.networks.loaded_networks == []


def test_failing_hook_keeps_row_active(webui, tmp_path):
    from lib_lora_train.dicom.pseudonym import Pseudonymizer
    from lib_lora_train.home import DataHome
    from lib_lora_train.registry import Registry
    from tests.registry.conftest import register, write_dataset

    home = DataHome(tmp_path / "home").ensure()
    manifest = write_dataset(home.datasets_dir / "ds-a", "ds-a", [0], Pseudonymizer(bytes(range(32))))
    exported = write_adapter(home.adapters_dir / "chest", "chest")
    broken = types.SimpleNamespace(available_networks={}, loaded_networks=[],
                                   list_available_networks=lambda: (_ for _ in ()).throw(OSError("disk gone")))
    hook = lora_bridge.webui_delete_hook(webui.lora_dir, networks_module=broken, shared_module=webui.shared)
    with Registry(home) as registry:
        register(registry, exported, manifest, home.datasets_dir / "ds-a")
        with pytest.raises(ErasureError, match="still active"):
            registry.delete("chest", actor="alice", reason="no longer needed", hooks=(hook,))
        assert registry.get("chest").status == "active"


def test_a_model_that_appears_during_publishing_is_never_overwritten(tmp_path, monkeypatch):
    from lib_lora_train.webui import lora_bridge

    source = tmp_path / "src.safetensors"
    source.write_bytes(b"our adapter bytes")
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "Lora" / "race.safetensors"
    target.parent.mkdir()
    real_copy = lora_bridge.shutil.copyfile

    def copy_then_another_tool_saves(src, dst):
        real_copy(src, dst)
        target.write_bytes(b"someone else's model")

    monkeypatch.setattr(lora_bridge.shutil, "copyfile", copy_then_another_tool_saves)
    with pytest.raises(lora_bridge.PublishError, match="different model"):
        lora_bridge._copy_verified(source, target, digest)
    assert target.read_bytes() == b"someone else's model"
    assert [p.name for p in target.parent.iterdir()] == ["race.safetensors"]
