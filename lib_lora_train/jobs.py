"""Run training jobs one at a time in a background thread, with status anyone can poll.

A web request cannot wait for a training run, and two runs (or a run and a WebUI generation)
on one GPU corrupt each other. :class:`JobManager` therefore queues jobs FIFO and runs them on
one daemon worker thread, each inside an optional lock (the WebUI's ``call_queue.queue_lock``),
and keeps a frozen :class:`JobStatus` per job that the progress callback replaces after every
step, so a reloaded page or an API client can re-attach at any time.

    manager = JobManager()
    job_id = manager.submit(lambda: LoRATrainer(config, home), actor="alice", lock=queue_lock)
    manager.status(job_id).state   # "queued", "running", "done", "failed" or "cancelled"

There is no module-level manager: the host (WebUI glue or standalone app) creates one.
"""

import collections
import contextlib
import dataclasses
import logging
import secrets
import threading

from .errors import ConfigError, JobBusyError, JobNotFoundError, LoraTrainError, ModelLoadError

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})
DEFAULT_MAX_QUEUED = 4
DEFAULT_MAX_HISTORY = 50
OUT_OF_MEMORY = "out of memory: lower batch_size or resolution, or enable gradient_checkpointing"


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """What a job is doing now; a new object after every change, so reads need no lock.

    Attributes:
        job_id (`str`): opaque id (``job-`` plus random hex), safe to show and log.
        state (`str`): one of :data:`STATES`.
        step, total_steps, epoch (`int`): progress of the run.
        loss (`float | None`): loss of the last step.
        eta_seconds (`float | None`): estimated time left.
        steps_per_second (`float | None`): recent speed.
        adapter (`str | None`): the adapter name, once exported.
        registry_id (`str | None`): the registry id, once registered.
        error (`str | None`): what failed and how to fix it; never a traceback.
    """

    job_id: str
    state: str = "queued"
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    eta_seconds: float | None = None
    steps_per_second: float | None = None
    adapter: str | None = None
    registry_id: str | None = None
    error: str | None = None

    @property
    def finished(self):
        return self.state in FINISHED_STATES

    def to_dict(self):
        return dataclasses.asdict(self)


def describe_error(exc):
    """A message for a failed job: what failed and the fix, never a traceback or personal data.

    Product errors (``LoraTrainError``) are written to be shown and hold no personal data, so
    their message is used; anything else may carry paths or values, so only its type is named.
    """
    if isinstance(exc, MemoryError) or _is_cuda_oom(exc):
        return OUT_OF_MEMORY
    if isinstance(exc, (ModelLoadError, ConfigError, LoraTrainError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: training failed unexpectedly; see the server log"


def _is_cuda_oom(exc):
    """``torch.cuda.OutOfMemoryError`` without importing torch (it is loaded if it was raised)."""
    return any(cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch") for cls in type(exc).__mro__)


@dataclasses.dataclass
class _Job:
    factory: object
    actor: str
    lock: object
    status: JobStatus
    after_register: object = None
    name: str | None = None
    output_dir: object = None
    dataset_dir: str | None = None
    cancel_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    losses: list = dataclasses.field(default_factory=list)
    started: bool = False


class JobManager:
    """Queue and run training jobs, one at a time, on a daemon thread.

    A submit while another job is queued or running is queued (first in, first out) rather
    than refused, so a user can line up runs; at most ``max_queued`` jobs may wait.

    Args:
        max_queued (`int`): waiting jobs allowed beyond the running one.
        max_history (`int`): finished jobs whose status is kept for polling.
        observer (*optional*): told of a running job's start, every step and its end
            (``job_started(status)``, ``job_progress(status) -> bool`` where True asks to cancel,
            ``job_finished(status)``), e.g. to mirror it into the WebUI's progress state. Its
            failures are logged and never stop a job.
    """

    def __init__(self, max_queued=DEFAULT_MAX_QUEUED, max_history=DEFAULT_MAX_HISTORY, observer=None):
        self.max_queued = max_queued
        self.max_history = max_history
        self.observer = observer
        self._guard = threading.Lock()
        self._jobs = collections.OrderedDict()
        self._queue = collections.deque()
        self._worker = None
        self._running = None

    def submit(self, trainer_factory, *, actor, lock=None, after_register=None, name=None, output_dir=None,
               dataset_dir=None):
        """Queue a job; returns its id at once.

        Args:
            trainer_factory (`Callable[[], LoRATrainer]`): called on the worker thread, inside
                ``lock``, so it may read the WebUI's loaded model safely.
            actor (`str`): who asked; recorded in the audit log.
            lock (*optional*): context manager held for the whole run (the WebUI's
                ``modules.call_queue.queue_lock``), so generations and checkpoint switches wait.
            after_register (*optional*): passed to ``workflow.train_and_register`` (publishing).
            name (`str`, *optional*): the adapter name, reserved while the job waits or runs, so a
                double click cannot train two adapters into one file.
            output_dir (*optional*): the job's own output folder, removed if the job is cancelled
                or fails (checkpoints and previews of an adapter that will never be registered).
            dataset_dir (*optional*): the prepared dataset it trains on (see :meth:`dataset_users`).

        Raises:
            JobBusyError: ``max_queued`` jobs are already waiting, or a waiting or running job
                already trains an adapter of this name.
        """
        with self._guard:
            if len(self._queue) + (self._running is not None) > self.max_queued:
                raise JobBusyError(f"training is busy: {len(self._queue)} job(s) waiting, and at most "
                                   f"{self.max_queued} may wait; wait for one to finish or cancel one")
            if name is not None and any(j.name is not None and j.name.casefold() == name.casefold()
                                        and not j.status.finished for j in self._jobs.values()):
                raise JobBusyError(f"a training job for {name!r} is already waiting or running; wait for it, or "
                                   "choose another name")
            job_id = f"job-{secrets.token_hex(6)}"
            job = _Job(trainer_factory, actor, lock, JobStatus(job_id), after_register, name=name,
                       output_dir=output_dir, dataset_dir=None if dataset_dir is None else str(dataset_dir))
            self._jobs[job_id] = job
            self._queue.append(job)
            self._forget_old()
            if self._worker is None:
                self._worker = threading.Thread(target=self._drain, name="medical-lora-jobs", daemon=True)
                self._worker.start()
        logger.info("training job %s queued", job_id)
        return job_id

    def status(self, job_id):
        """The current :class:`JobStatus`. Raises :class:`JobNotFoundError` for an unknown id."""
        return self._job(job_id).status

    def cancel(self, job_id):
        """Ask a job to stop; returns its status.

        A queued job is cancelled at once; a running one stops within one step (the loop
        checks the event) and exports nothing; a finished one is left as it is.
        """
        with self._guard:
            job = self._job(job_id)
            job.cancel_event.set()
            if job in self._queue:
                self._queue.remove(job)
                self._finish(job, state="cancelled")
        return job.status

    def jobs(self):
        """Status of every known job, oldest first."""
        with self._guard:
            return [job.status for job in self._jobs.values()]

    def latest(self):
        """Status of the most recently submitted job, or None; lets a reloaded page re-attach."""
        with self._guard:
            return next(reversed(self._jobs.values())).status if self._jobs else None

    def dataset_users(self, dataset_dir):
        """How many waiting or running jobs train on this dataset (erasing it must wait for them)."""
        with self._guard:
            return sum(1 for job in self._jobs.values()
                       if job.dataset_dir == str(dataset_dir) and not job.status.finished)

    def busy(self):
        """True while a job waits or runs (it holds, or will hold, the model)."""
        with self._guard:
            return any(not job.status.finished for job in self._jobs.values())

    def latest_sample(self, job_id):
        """The newest ``sample_prompt`` preview of a job (a path), or None."""
        import pathlib

        output_dir = self._job(job_id).output_dir
        samples = sorted((pathlib.Path(output_dir) / "samples").glob("epoch_*.png")) if output_dir else []
        return samples[-1] if samples else None

    def losses(self, job_id):
        """The loss of every step so far (a copy), for the live loss curve."""
        return list(self._job(job_id).losses)

    def wait(self, job_id, timeout=None):
        """Block until the job is finished (or ``timeout`` seconds pass); returns its status."""
        job = self._job(job_id)
        job.finished_event.wait(timeout)
        return job.status

    def _job(self, job_id):
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no training job {job_id!r}; list the jobs to see the known ids")
        return job

    def _drain(self):
        while True:
            with self._guard:
                self._running = None
                if not self._queue:
                    self._worker = None
                    return
                job = self._running = self._queue.popleft()
                job.status = dataclasses.replace(job.status, state="running")
            self._run(job)

    def _run(self, job):
        """Train inside the lock; the observer hears of the end before the lock is released, so
        a generation waiting for it never has its progress state reset by this job."""
        with job.lock if job.lock is not None else contextlib.nullcontext():
            try:
                result, exported, record = self._train(job)
            except Exception as exc:  # the worker must survive any job failure and report it
                # The type only: third-party messages and tracebacks may quote paths or header values.
                logger.error("training job %s failed (%s)", job.status.job_id, type(exc).__name__)
                outcome = {"state": "failed", "error": describe_error(exc)}
            else:
                outcome = ({"state": "cancelled"} if result.stopped == "cancelled" else
                           {"state": "done", "adapter": exported.name, "registry_id": record.id})
            if job.started:
                job.status = dataclasses.replace(job.status, **outcome)
                self._notify("job_finished", job)
        if outcome["state"] != "done":
            self._remove_output(job)
        self._finish(job, **outcome)

    @staticmethod
    def _remove_output(job):
        """Remove a cancelled or failed job's folder, unless its adapter was exported (a failure
        after registration, e.g. publishing, leaves a registered adapter that delete handles)."""
        import pathlib
        import shutil

        if job.output_dir is None:
            return
        folder = pathlib.Path(job.output_dir)
        if job.name is not None and (folder / f"{job.name}.safetensors").exists():
            return
        shutil.rmtree(folder, ignore_errors=True)

    def _train(self, job):
        from .workflow import train_and_register

        trainer = job.factory()
        if trainer.examples is None:
            trainer.prepare_data()
        job.status = dataclasses.replace(job.status, total_steps=trainer.total_steps())
        job.started = True
        self._notify("job_started", job)
        return train_and_register(trainer, actor=job.actor, progress=lambda p: self._on_progress(job, p),
                                  cancel_event=job.cancel_event, after_register=job.after_register)

    def _on_progress(self, job, progress):
        job.losses.append(float(progress.loss))
        job.status = dataclasses.replace(
            job.status, step=progress.step, total_steps=progress.total_steps, epoch=progress.epoch,
            loss=float(progress.loss), eta_seconds=float(progress.eta_seconds),
            steps_per_second=float(progress.steps_per_second))
        if self._notify("job_progress", job):
            job.cancel_event.set()

    def _notify(self, event, job):
        if self.observer is None:
            return None
        try:
            return getattr(self.observer, event)(job.status)
        except Exception as exc:  # mirroring progress must never break a run
            logger.warning("job observer %s failed (%s)", event, type(exc).__name__)
            return None

    def _finish(self, job, *, state, **fields):
        job.status = dataclasses.replace(job.status, state=state, **fields)
        job.finished_event.set()
        logger.info("training job %s %s", job.status.job_id, state)

    def _forget_old(self):
        finished = [job_id for job_id, job in self._jobs.items() if job.status.finished]
        for job_id in finished[:max(0, len(finished) - self.max_history)]:
            del self._jobs[job_id]
