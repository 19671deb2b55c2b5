"""A training job mirrored into the WebUI's progress state (stand-in of v1.10.1 ``shared.state`` and
``modules.progress``): visible to ``/sdapi/v1/progress``, cancelled by the WebUI's Interrupt button."""

import importlib
import pathlib
import sys
import threading

import pytest

from lib_lora_train.jobs import JobManager
from lib_lora_train.webui.progress import JOB_NAME, WebUIProgressMirror, task_id
from tests.test_jobs import TIMEOUT, FakeTrainer, fake_workflow  # noqa: F401  (the fixture is used)

STANDIN = pathlib.Path(__file__).resolve().parents[1] / "webui_standin"


@pytest.fixture
def webui(monkeypatch):
    for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN))
    shared = importlib.import_module("modules.shared")
    progress = importlib.import_module("modules.progress")
    monkeypatch.setattr(shared, "state", shared.State())
    monkeypatch.setattr(progress, "current_task", None)
    monkeypatch.setattr(progress, "finished_tasks", [])
    return shared, progress


def test_a_running_job_is_the_webuis_current_task_with_its_step_and_loss(webui):
    shared, progress = webui
    seen = []

    class Watching(WebUIProgressMirror):
        def job_progress(self, status):
            stop = super().job_progress(status)
            seen.append((progress.current_task, shared.state.job, shared.state.job_count,
                         shared.state.sampling_step, shared.state.sampling_steps, shared.state.textinfo))
            return stop

    manager = JobManager(observer=Watching(shared, progress))
    job_id = manager.submit(lambda: FakeTrainer(steps=3), actor="alice")
    assert manager.wait(job_id, TIMEOUT).state == "done"
    assert seen[0] == (task_id(job_id), JOB_NAME, 1, 1, 3, f"{JOB_NAME}: step 1/3, loss 0.5000")
    assert [entry[3] for entry in seen] == [1, 2, 3]
    assert progress.current_task is None and progress.finished_tasks == [task_id(job_id)]
    assert shared.state.job == "" and shared.state.job_count == 0


def test_the_webuis_interrupt_button_cancels_the_job_within_a_step(webui):
    shared, progress = webui
    gate, started = threading.Event(), threading.Event()
    manager = JobManager(observer=WebUIProgressMirror(shared, progress))
    job_id = manager.submit(lambda: FakeTrainer(steps=5, gate=gate, started=started), actor="alice")
    assert started.wait(TIMEOUT)  # the job began (and with it the WebUI's job state)
    shared.state.interrupt()
    gate.set()
    status = manager.wait(job_id, TIMEOUT)
    assert status.state == "cancelled" and status.step == 1
    assert progress.current_task is None


def test_a_failing_mirror_never_stops_training(webui):
    class Broken:
        def job_started(self, status):
            raise RuntimeError("boom")

        job_progress = job_finished = job_started

    manager = JobManager(observer=Broken())
    job_id = manager.submit(lambda: FakeTrainer(steps=2), actor="alice")
    assert manager.wait(job_id, TIMEOUT).state == "done"


def test_the_job_ends_in_the_webui_before_the_queue_lock_is_released(webui):
    """Else a generation waiting for the lock could begin() and then be end()ed by this job."""
    shared, progress = webui
    lock = threading.Lock()
    locked_at_finish = []

    class Watching(WebUIProgressMirror):
        def job_finished(self, status):
            locked_at_finish.append((lock.locked(), status.state))
            super().job_finished(status)

    manager = JobManager(observer=Watching(shared, progress))
    assert manager.wait(manager.submit(lambda: FakeTrainer(steps=1), actor="a", lock=lock), TIMEOUT).state == "done"
    assert locked_at_finish == [(True, "done")]
