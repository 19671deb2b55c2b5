"""Step 6 of the tab: the adapters table, deletion with hooks, forget-a-patient and the audit view."""

import json

import pytest

from lib_lora_train.config import IngestConfig
from lib_lora_train.dicom.phantom import PhantomPatient
from lib_lora_train.errors import InputError
from lib_lora_train.ui import adapters, datasets, training
from lib_lora_train.ui.context import AccessDeniedError

from .conftest import FAST_OPTIONS, RECORD, make_context


@pytest.fixture
def trained(home, embedded_host, gradio_uploads):
    """A context with one adapter trained from two phantom patients, and the hook calls it saw."""
    seen = []
    context = make_context(home, embedded_host, auth_enabled=True, delete_users=("dpo",))
    context.state.delete_hooks = (lambda record: seen.append(record.name),)
    upload_id = datasets.take_uploads(home, gradio_uploads)
    view = datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off", resolution=64), actor="alice")
    config = training.build_config(context, view.dataset_id, RECORD, FAST_OPTIONS)
    job_id = training.start_training(context, config, user="alice", upload_id=upload_id)
    assert context.state.jobs.wait(job_id, timeout=300).state == "done"
    return context, seen


@pytest.mark.parametrize("size, text", [(0, "0 B"), (1023, "1023 B"), (2048, "2.0 KB"), (5 * 1024**2, "5.0 MB")])
def test_human_size(size, text):
    assert adapters.human_size(size) == text


def test_the_table_lists_the_registered_adapter(trained):
    context, _ = trained
    [row] = adapters.adapter_rows(context.home)
    assert (row.name, row.purpose, row.owner, row.status) == ("chest_ct", RECORD["purpose"], RECORD["owner"], "active")
    assert row.expires == "2027-06-30" and row.last_used == "never" and row.size.endswith("KB")


def test_delete_is_refused_to_users_outside_the_list_and_audited_for_the_allowed(trained):
    context, seen = trained
    with pytest.raises(AccessDeniedError, match="'alice' may not delete"):
        adapters.delete_adapter(context, "chest_ct", user="alice")
    receipt = adapters.delete_adapter(context, "chest_ct", user="dpo")
    assert receipt["name"] == "chest_ct" and receipt["completed_by"] == "dpo"
    assert seen == ["chest_ct"]  # the host's hook (the WebUI's lists and caches) ran
    assert adapters.adapter_rows(context.home) == []
    assert not list(context.home.root.rglob("chest_ct*.safetensors"))
    with pytest.raises(InputError, match="choose the adapter"):
        adapters.delete_adapter(context, " ", user="dpo")


def test_forget_patient_erases_the_adapter_without_keeping_the_id(trained):
    context, seen = trained
    patient_id = PhantomPatient(1).patient_id
    receipt = adapters.forget_patient(context, patient_id, user="dpo")
    assert [entry["name"] for entry in receipt["adapters"]] == ["chest_ct"] and seen == ["chest_ct"]
    assert receipt["reason"] == adapters.FORGET_REASON
    stored = [path.read_bytes() for path in context.home.root.rglob("*") if path.is_file()]
    assert not any(patient_id.encode() in data for data in stored)
    assert patient_id not in json.dumps(receipt)
    with pytest.raises(InputError, match="type the patient id"):
        adapters.forget_patient(context, "", user="dpo")


def test_the_audit_view_shows_the_latest_entries_and_detects_tampering(trained):
    context, _ = trained
    view = adapters.audit_view(context.home)
    assert view.intact and view.lines >= 5
    actions = [row[2] for row in view.rows]
    assert actions[0] == "register" and "train_start" in actions and "ingest" in actions
    log = context.home.audit_log_path
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"alice"', '"mallory"')
    log.write_text("\n".join(lines) + "\n")
    view = adapters.audit_view(context.home)
    assert not view.intact and view.problem.startswith("line 2")
