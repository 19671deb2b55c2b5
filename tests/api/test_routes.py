"""The REST API end to end with the embedded tiny model: upload, train, list, erase, access control."""

import base64
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_lora_train.api import ApiAuth, ApiState, parse_credentials
from lib_lora_train.api.routes import build_router
from lib_lora_train.config import IngestConfig, TrainConfig
from lib_lora_train.dicom.phantom import PhantomPatient, write_phantom_series
from lib_lora_train.errors import ConfigError
from lib_lora_train.home import resolve_home
from lib_lora_train.jobs import JobManager
from lib_lora_train.trainer.api import LoRATrainer
from tests.leakcheck import find_needles

V1 = "/medical-lora/v1"
USERS = {"alice": "s3cret", "bob": "hunter2"}
RECORD = {"purpose": "segmentation research", "owner": "Radiology research lead", "department": "Radiology",
          "legal_basis": "GDPR Art. 6(1)(e) and 9(2)(j)", "dpia_reference": "DPIA-2026-014"}
SECRET_NAME = "Doe^John_MRN123.dcm"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from lib_lora_train.hosts.diffusers_host import DiffusersHost

    return DiffusersHost.embedded(tmp_path_factory.mktemp("models"))


@pytest.fixture
def home(tmp_path):
    return resolve_home(tmp_path / "home").ensure()


def _state(home, host, auth=None, **kwargs):
    def make_trainer(config):
        return LoRATrainer(config, home, host=host)

    return ApiState(home=home, jobs=JobManager(), make_trainer=make_trainer, auth=auth or ApiAuth(USERS),
                    ingest_config=IngestConfig(ocr="off", resolution=64), **kwargs)


def _client(state, client_host=None):
    app = FastAPI()
    app.include_router(build_router(state))
    if client_host is None:
        return TestClient(app)

    async def from_host(scope, receive, send):  # the peer address a reverse proxy or socket would give
        await app(dict(scope, client=(client_host, 50000)) if scope["type"] == "http" else scope, receive, send)

    return TestClient(from_host)


def _basic(user="alice", password=None):
    token = base64.b64encode(f"{user}:{password or USERS.get(user, 'x')}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _upload(client, tmp_path, patients=2):
    paths = write_phantom_series(tmp_path / "dicoms", n_patients=patients, slices_per_patient=2, size=64)
    files = [("files", (SECRET_NAME if i == 0 else f"img{i}.dcm", p.read_bytes(), "application/dicom"))
             for i, p in enumerate(paths)]
    files.append(("files", ("notes_Doe^Jane.txt", b"not a dicom file", "text/plain")))
    response = client.post(f"{V1}/datasets", files=files, headers=_basic())
    assert response.status_code == 200, response.text
    return response.json(), len(paths)


def _job_body(dataset_id, **overrides):
    return dict(dict(dataset_id=dataset_id, name="chest_api_v1", rank=2, alpha=2.0, max_steps=2, batch_size=2,
                     resolution=64, **RECORD), **overrides)


def _poll(client, job_id, until=("done", "failed", "cancelled"), timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"{V1}/jobs/{job_id}", headers=_basic()).json()
        if body["state"] in until:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {until}")


def _uploads_empty(home):
    folder = home.root / "uploads"
    return not folder.exists() or not any(folder.rglob("*"))


def _audit(home):
    return [json.loads(line) for line in home.audit_log_path.read_text().splitlines()]


def test_upload_train_list_and_delete(home, host, tmp_path):
    client = _client(_state(home, host))
    dataset, n_files = _upload(client, tmp_path)
    assert dataset["images"] == n_files and _uploads_empty(home)
    assert dataset["rejected"] == [{"file": f"input {n_files + 1}", "reason": dataset["rejected"][0]["reason"]}]
    assert "Doe" not in json.dumps(dataset) and "notes" not in json.dumps(dataset)
    response = client.post(f"{V1}/jobs", json=_job_body(dataset["dataset_id"]), headers=_basic())
    assert response.status_code == 200, response.text
    done = _poll(client, response.json()["job_id"])
    assert done["state"] == "done" and done["adapter"] == "chest_api_v1" and done["step"] == done["total_steps"] == 2
    adapters = client.get(f"{V1}/adapters", headers=_basic()).json()
    assert [a["name"] for a in adapters] == ["chest_api_v1"]
    taken = client.post(f"{V1}/jobs", json=_job_body(dataset["dataset_id"]), headers=_basic())
    assert taken.status_code == 409 and "already exists" in taken.json()["detail"]  # refused before training
    receipt = client.delete(f"{V1}/adapters/chest_api_v1", headers=_basic())
    assert receipt.status_code == 200 and receipt.json()["name"] == "chest_api_v1"
    assert [a["name"] for a in client.get(f"{V1}/adapters", headers=_basic()).json()
            if a["status"] == "active"] == []
    assert client.delete(f"{V1}/adapters/no_such_adapter", headers=_basic()).status_code == 404


def test_cancel_a_running_job_leaves_no_adapter(home, host, tmp_path):
    state = _state(home, host)
    started, release = threading.Event(), threading.Event()

    def slow_trainer(config):
        trainer = LoRATrainer(config, home, host=host)
        train = trainer.train

        def gated(cancel_event=None, progress=None):
            def waiting(update):
                started.set()
                release.wait(30)
                progress(update)
            return train(cancel_event=cancel_event, progress=waiting)

        trainer.train = gated
        return trainer

    state.make_trainer = slow_trainer
    client = _client(state)
    dataset, _ = _upload(client, tmp_path)
    job_id = client.post(f"{V1}/jobs", json=_job_body(dataset["dataset_id"], max_steps=3), headers=_basic()).json()["job_id"]
    assert started.wait(60)
    assert client.post(f"{V1}/jobs/{job_id}/cancel", headers=_basic()).status_code == 200
    release.set()
    assert _poll(client, job_id)["state"] == "cancelled"
    assert client.get(f"{V1}/adapters", headers=_basic()).json() == []


def test_busy_queue_is_409_and_unknown_ids_are_404(home, host, tmp_path):
    state = _state(home, host)
    state.jobs = JobManager(max_queued=0)
    gate = threading.Event()
    state.jobs.submit(lambda: gate.wait(30) and None, actor="t")
    client = _client(state)
    dataset, _ = _upload(client, tmp_path)
    response = client.post(f"{V1}/jobs", json=_job_body(dataset["dataset_id"]), headers=_basic())
    assert response.status_code == 409 and "busy" in response.json()["detail"]
    gate.set()
    assert client.get(f"{V1}/jobs/job-unknown", headers=_basic()).status_code == 404
    assert client.post(f"{V1}/jobs/job-unknown/cancel", headers=_basic()).status_code == 404
    response = client.post(f"{V1}/jobs", json=_job_body("ds-20990101-deadbeef"), headers=_basic())
    assert response.status_code == 404 and "ds-20990101-deadbeef" in response.json()["detail"]


@pytest.mark.parametrize("body, key", [
    ({"batch_size": 0}, "batch_size"), ({"purpose": None}, "purpose"), ({"colour": "red"}, "colour"),
    ({"name": "../evil"}, "name"),
])
def test_bad_job_values_are_400_naming_the_key(home, host, tmp_path, body, key):
    client = _client(_state(home, host))
    dataset, _ = _upload(client, tmp_path, patients=1)
    response = client.post(f"{V1}/jobs", json=_job_body(dataset["dataset_id"], **body), headers=_basic())
    assert response.status_code == 400 and key in response.json()["detail"]


def test_bad_json_is_400(home, host):
    client = _client(_state(home, host))
    headers = dict(_basic(), **{"Content-Type": "application/json"})
    response = client.post(f"{V1}/jobs", content=b"{not json", headers=headers)
    assert response.status_code == 400 and "JSON" in response.json()["detail"]
    assert client.post(f"{V1}/jobs", json=[1], headers=_basic()).status_code == 400
    assert client.post(f"{V1}/datasets", headers=_basic()).status_code == 400


def test_forget_patient_returns_a_receipt_without_the_raw_id(home, host, tmp_path):
    client = _client(_state(home, host))
    _upload(client, tmp_path)
    raw_id = PhantomPatient(0).patient_id
    response = client.post(f"{V1}/forget-patient", json={"patient_id": raw_id}, headers=_basic())
    assert response.status_code == 200, response.text
    assert response.json()["counts"]["datasets"] == 1 and raw_id not in response.text
    files = [p for p in home.root.rglob("*") if p.is_file()]
    assert all(find_needles(p.read_bytes(), [raw_id]) == [] for p in files)
    assert client.post(f"{V1}/forget-patient", json={"patient": raw_id}, headers=_basic()).status_code == 400


def test_without_credentials_every_request_is_refused_and_audited(home, host):
    client = _client(_state(home, host, auth=ApiAuth({})))
    response = client.get(f"{V1}/adapters")
    assert response.status_code == 403 and "--api-auth" in response.json()["detail"]
    (entry,) = _audit(home)
    assert entry["action"] == "auth_failed" and entry["outcome"] == "refused"
    assert entry["details"] == {"reason_code": "auth_not_configured"} and entry["target"] == "api:adapters"


def test_wrong_password_is_401_with_a_basic_challenge(home, host):
    client = _client(_state(home, host))
    for headers in (_basic("alice", "wrong"), _basic("mallory", "x"), {}):
        response = client.get(f"{V1}/adapters", headers=headers)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Basic"
    assert [e["details"]["reason_code"] for e in _audit(home)] == ["bad_credentials", "bad_credentials",
                                                                     "missing_credentials"]
    assert _audit(home)[0]["actor"] == "alice"


def test_allow_lists_refuse_other_users(home, host):
    client = _client(_state(home, host, auth=ApiAuth(USERS, delete_users=("alice",), train_users=("alice",))))
    response = client.delete(f"{V1}/adapters/anything", headers=_basic("bob"))
    assert response.status_code == 403 and "delete" in response.json()["detail"]
    assert client.post(f"{V1}/jobs", json={}, headers=_basic("bob")).status_code == 403
    assert client.get(f"{V1}/adapters", headers=_basic("bob")).status_code == 200
    assert client.delete(f"{V1}/adapters/anything", headers=_basic("alice")).status_code == 404
    assert [e["details"]["reason_code"] for e in _audit(home)] == ["not_allowed", "not_allowed"]


def test_unauthenticated_local_access_only_from_loopback_when_enabled(home, host):
    open_local = _state(home, host, auth=ApiAuth({}, allow_unauthenticated_local=True))
    assert _client(open_local, "127.0.0.1").get(f"{V1}/adapters").status_code == 200
    assert _client(open_local, "::1").get(f"{V1}/adapters").status_code == 200
    assert _client(open_local, "10.0.0.5").get(f"{V1}/adapters").status_code == 403
    closed = _state(home, host, auth=ApiAuth({}))
    assert _client(closed, "127.0.0.1").get(f"{V1}/adapters").status_code == 403


def test_the_lock_is_held_during_a_run_and_released_after_failure(home, host, tmp_path):
    events = []

    class Lock:
        def __enter__(self):
            events.append("acquire")

        def __exit__(self, *exc):
            events.append("release")

    state = _state(home, host, lock=Lock())
    client = _client(state)
    dataset, _ = _upload(client, tmp_path, patients=1)
    seen = []

    def failing(config):
        seen.append(list(events))
        raise MemoryError

    state.make_trainer = failing
    job_id = client.post(f"{V1}/jobs", json=_job_body(dataset["dataset_id"]), headers=_basic()).json()["job_id"]
    body = _poll(client, job_id)
    assert body["state"] == "failed" and body["error"].startswith("out of memory")
    assert seen == [["acquire"]] and events == ["acquire", "release"]


def test_parse_credentials():
    assert parse_credentials("alice:s3cret, bob:a:b") == {"alice": "s3cret", "bob": "a:b"}
    assert parse_credentials(None) == {} and parse_credentials("") == {}
    with pytest.raises(ConfigError, match="entry 2"):
        parse_credentials("alice:x,nocolon")


def test_train_config_keys_match_the_api():
    assert TrainConfig(lora_rank=2).lora_rank == 2


def test_large_uploads_never_touch_the_system_temp_folder(home, host, tmp_path, monkeypatch):
    import tempfile

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    spooled = []  # Starlette's SpooledTemporaryFile rolls over through tempfile.TemporaryFile (unlinked at once)
    real_temporary_file = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spooled.append(1) or real_temporary_file(*a, **k))
    path = write_phantom_series(tmp_path / "big", n_patients=1, slices_per_patient=1, size=1024)[0]
    assert path.stat().st_size > 2 * 1024 * 1024  # above Starlette's 1 MB in-memory spool limit
    client = _client(_state(home, host))
    response = client.post(f"{V1}/datasets", files=[("files", ("x.dcm", path.read_bytes(), "application/dicom"))],
                           headers=_basic())
    assert response.status_code == 200 and response.json()["images"] == 1
    assert list(system_tmp.iterdir()) == [] and spooled == []
    assert list((home.root / "uploads").iterdir()) == []
