"""JobManager: one job at a time, FIFO queue, cancel, readable errors, the lock held per run."""

import threading
import types

import pytest

from lib_lora_train import workflow
from lib_lora_train.errors import ConfigError, ModelLoadError
from lib_lora_train.jobs import (
    OUT_OF_MEMORY,
    JobBusyError,
    JobManager,
    JobNotFoundError,
    describe_error,
)
from lib_lora_train.trainer.loop import TrainingDivergedError, TrainProgress

TIMEOUT = 10


class FakeTrainer:
    """Stands in for LoRATrainer: ``steps`` progress calls, optionally waiting or failing."""

    def __init__(self, steps=3, gate=None, error=None, started=None):
        self.steps, self.gate, self.error, self.started = steps, gate, error, started
        self.examples = None
        self.actor = None

    def prepare_data(self):
        self.examples = [0] * 4

    def total_steps(self):
        return self.steps

    def run(self, progress, cancel_event):
        if self.started is not None:
            self.started.set()
        for step in range(1, self.steps + 1):
            if self.gate is not None:
                self.gate.wait(TIMEOUT)
            if cancel_event.is_set():
                return types.SimpleNamespace(stopped="cancelled"), None, None
            if self.error is not None:
                raise self.error
            progress(TrainProgress(step, self.steps, 1, 0.5 / step, 1e-4, 2.0, float(self.steps - step)))
        return (types.SimpleNamespace(stopped="completed"), types.SimpleNamespace(name="chest_v1"),
                types.SimpleNamespace(id="ad-1"))


@pytest.fixture(autouse=True)
def fake_workflow(monkeypatch):
    def train_and_register(trainer, *, actor, progress=None, cancel_event=None, after_register=None):
        trainer.actor = actor
        result = trainer.run(progress, cancel_event)
        if after_register is not None and result[0].stopped != "cancelled":
            after_register(result[1], result[2])
        return result

    monkeypatch.setattr(workflow, "train_and_register", train_and_register)


class RecordingLock:
    def __init__(self):
        self.events = []

    def __enter__(self):
        self.events.append("acquire")

    def __exit__(self, *exc):
        self.events.append("release")


def test_a_job_runs_to_done_with_progress_and_adapter():
    manager, trainer = JobManager(), FakeTrainer()
    job_id = manager.submit(lambda: trainer, actor="alice")
    status = manager.wait(job_id, TIMEOUT)
    assert status.state == "done" and status.adapter == "chest_v1" and status.registry_id == "ad-1"
    assert (status.step, status.total_steps, status.epoch, status.eta_seconds) == (3, 3, 1, 0.0)
    assert status.loss == pytest.approx(0.5 / 3) and status.error is None
    assert trainer.actor == "alice"
    assert manager.latest() == status and manager.jobs() == [status]


def test_a_second_submit_is_queued_then_runs_in_order():
    gate, started = threading.Event(), threading.Event()
    manager = JobManager()
    first = manager.submit(lambda: FakeTrainer(gate=gate, started=started), actor="a")
    second = manager.submit(lambda: FakeTrainer(), actor="b")
    assert started.wait(TIMEOUT)
    assert manager.status(first).state == "running" and manager.status(second).state == "queued"
    gate.set()
    assert manager.wait(second, TIMEOUT).state == "done" and manager.status(first).state == "done"
    assert [s.job_id for s in manager.jobs()] == [first, second] and manager.latest().job_id == second


def test_the_queue_is_bounded():
    gate, started = threading.Event(), threading.Event()
    manager = JobManager(max_queued=1)
    manager.submit(lambda: FakeTrainer(gate=gate, started=started), actor="a")
    assert started.wait(TIMEOUT)
    waiting = manager.submit(lambda: FakeTrainer(), actor="a")
    with pytest.raises(JobBusyError, match="at most 1 may wait"):
        manager.submit(lambda: FakeTrainer(), actor="a")
    gate.set()
    assert manager.wait(waiting, TIMEOUT).state == "done"


def test_cancel_a_queued_job_at_once_and_a_running_one_within_a_step():
    gate, started = threading.Event(), threading.Event()
    manager = JobManager()
    running = manager.submit(lambda: FakeTrainer(gate=gate, started=started), actor="a")
    queued = manager.submit(lambda: FakeTrainer(), actor="a")
    assert started.wait(TIMEOUT)
    assert manager.cancel(queued).state == "cancelled"
    manager.cancel(running)
    gate.set()
    status = manager.wait(running, TIMEOUT)
    assert status.state == "cancelled" and status.adapter is None and status.registry_id is None


def test_unknown_job_ids_raise():
    manager = JobManager()
    for call in (manager.status, manager.cancel):
        with pytest.raises(JobNotFoundError, match="job-nope"):
            call("job-nope")
    assert manager.latest() is None


def test_the_lock_is_held_for_the_run_and_released_after_failure():
    lock, seen = RecordingLock(), []

    class Watching(FakeTrainer):
        def run(self, progress, cancel_event):
            seen.append(list(lock.events))
            raise RuntimeError("boom")

    manager = JobManager()
    status = manager.wait(manager.submit(lambda: Watching(), actor="a", lock=lock), TIMEOUT)
    assert seen == [["acquire"]] and lock.events == ["acquire", "release"]
    assert status.state == "failed"


class OutOfMemoryError(RuntimeError):
    """Looks like torch.cuda.OutOfMemoryError to the manager."""


OutOfMemoryError.__module__ = "torch.cuda"


@pytest.mark.parametrize("error, expected", [
    (MemoryError(), OUT_OF_MEMORY),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), OUT_OF_MEMORY),
    (TrainingDivergedError("loss is NaN; lower learning_rate"), "loss is NaN; lower learning_rate"),
    (ModelLoadError("base model not found; pick one"), "base model not found; pick one"),
    (ConfigError("batch_size=0 must be at least 1"), "batch_size=0 must be at least 1"),
    (KeyError("/data/Doe^John/img.dcm"), "KeyError: training failed unexpectedly; see the server log"),
])
def test_errors_become_readable_messages_without_tracebacks(error, expected):
    assert describe_error(error) == expected
    manager = JobManager()
    status = manager.wait(manager.submit(lambda: FakeTrainer(error=error), actor="a"), TIMEOUT)
    assert status.state == "failed" and status.error == expected and "Traceback" not in status.error


def test_a_name_is_reserved_while_its_job_waits_or_runs():
    manager, gate = JobManager(), threading.Event()
    first = manager.submit(lambda: FakeTrainer(gate=gate), actor="alice", name="chest_v1")
    with pytest.raises(JobBusyError, match="'chest_v1' is already waiting or running"):
        manager.submit(lambda: FakeTrainer(), actor="bob", name="chest_v1")
    other = manager.submit(lambda: FakeTrainer(), actor="bob", name="chest_v2")
    gate.set()
    assert manager.wait(first, TIMEOUT).state == "done" and manager.wait(other, TIMEOUT).state == "done"
    manager.wait(manager.submit(lambda: FakeTrainer(), actor="bob", name="chest_v1"), TIMEOUT)


@pytest.mark.parametrize("outcome", ["cancelled", "failed"])
def test_a_cancelled_or_failed_job_leaves_no_output_folder(tmp_path, outcome):
    folder = tmp_path / "adapters" / "chest_v1"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "samples").mkdir()
    (folder / "samples" / "epoch_001.png").write_bytes(b"preview")
    manager, gate, started = JobManager(), threading.Event(), threading.Event()
    trainer = FakeTrainer(gate=gate, started=started, error=RuntimeError("boom") if outcome == "failed" else None)
    job_id = manager.submit(lambda: trainer, actor="alice", name="chest_v1", output_dir=folder)
    assert started.wait(TIMEOUT)
    if outcome == "cancelled":
        manager.cancel(job_id)
    gate.set()
    assert manager.wait(job_id, TIMEOUT).state == outcome
    assert not folder.exists() and (tmp_path / "adapters").exists()


def test_a_failure_after_export_keeps_the_registered_adapter_folder(tmp_path):
    folder = tmp_path / "chest_v1"
    folder.mkdir()
    (folder / "chest_v1.safetensors").write_bytes(b"registered")

    def fail_publishing(exported, record):
        raise OSError("the Lora folder is read-only")

    manager = JobManager()
    job_id = manager.submit(lambda: FakeTrainer(), actor="alice", name="chest_v1", output_dir=folder,
                            after_register=fail_publishing)
    assert manager.wait(job_id, TIMEOUT).state == "failed"
    assert (folder / "chest_v1.safetensors").exists()


def test_dataset_users_and_busy_count_waiting_and_running_jobs_only(tmp_path):
    manager, gate = JobManager(), threading.Event()
    assert not manager.busy()
    first = manager.submit(lambda: FakeTrainer(gate=gate), actor="a", dataset_dir=tmp_path / "ds-1")
    manager.submit(lambda: FakeTrainer(), actor="a", dataset_dir=tmp_path / "ds-1")
    manager.submit(lambda: FakeTrainer(), actor="a", dataset_dir=tmp_path / "ds-2")
    assert manager.busy() and manager.dataset_users(tmp_path / "ds-1") == 2
    gate.set()
    manager.wait(first, TIMEOUT)
    for status in manager.jobs():
        manager.wait(status.job_id, TIMEOUT)
    assert manager.dataset_users(tmp_path / "ds-1") == 0 and not manager.busy()


def test_names_are_reserved_regardless_of_case():
    """On Windows and macOS "Chest" and "chest" are one file."""
    manager, gate = JobManager(), threading.Event()
    manager.submit(lambda: FakeTrainer(gate=gate), actor="a", name="Chest_v1")
    with pytest.raises(JobBusyError, match="already waiting or running"):
        manager.submit(lambda: FakeTrainer(), actor="b", name="chest_V1")
    gate.set()
