"""Usage tracking: names parsed from the WebUI's extra-network data, recorded off the hot path."""

import dataclasses
import importlib.util
import pathlib
import sys
import types


from lib_lora_train.home import resolve_home
from lib_lora_train.registry import Registry
from lib_lora_train.webui.usage import UsageRecorder, lora_names
from tests.registry.conftest import KEY, register, write_adapter, write_dataset
from lib_lora_train.dicom.pseudonym import Pseudonymizer

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class ExtraNetworkParams:
    """As ``modules/extra_networks.py::ExtraNetworkParams``: ``items`` / ``positional`` / ``named``."""

    items: list
    positional: list
    named: dict = dataclasses.field(default_factory=dict)


def test_names_come_from_the_parsed_lora_entries():
    data = {"lora": [ExtraNetworkParams(["chest_ct", "0.7"], ["chest_ct", "0.7"]),
                     ExtraNetworkParams(["chest_ct", "1"], ["chest_ct", "1"]),
                     ExtraNetworkParams(["other"], ["other"])],
            "hypernet": [ExtraNetworkParams(["h"], ["h"])]}
    assert lora_names(data) == ["chest_ct", "other"]
    assert lora_names(None) == [] and lora_names({}) == []


def _registered(home, name="chest_ct", **overrides):
    manifest = write_dataset(home.datasets_dir / f"ds-{name}", f"ds-{name}", [0], Pseudonymizer(KEY))
    exported = write_adapter(home.adapters_dir / name, name)
    with Registry(home) as registry:
        return register(registry, exported, manifest, home.datasets_dir / f"ds-{name}", **overrides)


def _audit(home):
    import json

    return [json.loads(line) for line in home.audit_log_path.read_text().splitlines()]


def test_recorder_marks_registered_adapters_used_and_audits(tmp_path):
    home = resolve_home(tmp_path / "home").ensure()
    _registered(home)
    recorder = UsageRecorder(home)
    assert recorder.record(["chest_ct", "someone_elses_lora"], actor="alice").result(timeout=30) == ["chest_ct"]
    assert recorder.record([]) is None
    recorder.close()
    with Registry(home) as registry:
        assert registry.get("chest_ct").last_used_at is not None
    last = _audit(home)[-1]
    assert last["action"] == "use" and last["actor"] == "alice" and last["details"]["names"] == ["chest_ct"]


def test_recorder_never_raises_into_generation(tmp_path):
    home = resolve_home(tmp_path / "home").ensure()
    (home.root / "registry.sqlite").write_bytes(b"not a database at all" * 10)
    recorder = UsageRecorder(home)
    assert recorder.record(["chest_ct"]).result(timeout=30) == []
    recorder.close()


def test_always_visible_script_reports_the_batch(tmp_path, monkeypatch):
    standin = ROOT / "tests" / "webui_standin"
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(standin))
    shared = importlib.import_module("modules.shared")
    monkeypatch.setitem(shared.opts.data, "medical_lora_home", str(tmp_path / "home"))
    spec = importlib.util.spec_from_file_location("medical_lora_usage", ROOT / "scripts" / "medical_lora_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    home = resolve_home(tmp_path / "home").ensure()
    _registered(home)
    script = module.MedicalLoraUsage()
    assert script.show(False) is importlib.import_module("modules.scripts").AlwaysVisible
    p = types.SimpleNamespace(user="bob", extra_network_data={"lora": [ExtraNetworkParams(["chest_ct"], ["chest_ct"])]})
    script.process_batch(p, batch_number=0, prompts=["x"], seeds=[1], subseeds=[1])
    module.MedicalLoraUsage.recorder.close()
    assert _audit(home)[-1]["actor"] == "bob"
    module.MedicalLoraUsage.recorder = None


def test_start_up_maintenance_expires_and_calls_the_webui_hook(tmp_path):
    from lib_lora_train.api import ApiState
    from lib_lora_train.webui.app import start_maintenance

    home = resolve_home(tmp_path / "home").ensure()
    _registered(home, "old_lora")
    _registered(home, "fresh_lora")
    with Registry(home) as registry:  # an adapter registered long ago, now past its expiry date
        registry._conn.execute("UPDATE adapters SET expires_at = '2001-01-01' WHERE name = 'old_lora'")
    forgotten = []
    state = ApiState(home=home, jobs=None, make_trainer=None, delete_hooks=(lambda record: forgotten.append(record.name),))
    start_maintenance(state).join(timeout=60)
    assert forgotten == ["old_lora"]
    with Registry(home) as registry:
        assert registry.get("old_lora").status in ("expired", "deleted")
        assert registry.get("fresh_lora").status == "active"
    assert any(entry["action"] == "expire" for entry in _audit(home))
