"""Mirror a training job into the WebUI's own progress machinery.

While a job runs it is the WebUI's current task (``modules.progress``) and ``shared.state``
holds its step, total and a text line, so ``GET /sdapi/v1/progress``, the console and any client
of the WebUI see "medical-lora training: step 12/400, loss 0.1234" with an ETA computed by the
WebUI itself; and the WebUI's Interrupt button (``shared.state.interrupted``) cancels the job
within one step. The job holds the queue lock, so no generation competes for ``shared.state``.
"""

JOB_NAME = "medical-lora training"


def task_id(job_id):
    """The WebUI task id of a job (the ``task(...)`` form the WebUI's own ids use)."""
    return f"task(medical-lora-{job_id})"


class WebUIProgressMirror:
    """A :class:`JobManager` observer over ``modules.shared`` and ``modules.progress``."""

    def __init__(self, shared_module, progress_module):
        self.shared, self.progress = shared_module, progress_module

    def job_started(self, status):
        self.progress.start_task(task_id(status.job_id))
        state = self.shared.state
        state.begin(job=JOB_NAME)
        state.job_count, state.job_no = 1, 0
        state.sampling_steps, state.sampling_step = status.total_steps, 0
        state.textinfo = f"{JOB_NAME}: starting"

    def job_progress(self, status):
        state = self.shared.state
        state.sampling_steps, state.sampling_step = status.total_steps, status.step
        loss = f", loss {status.loss:.4f}" if status.loss is not None else ""
        state.textinfo = f"{JOB_NAME}: step {status.step}/{status.total_steps}{loss}"
        return bool(state.interrupted)

    def job_finished(self, status):
        self.shared.state.end()
        self.progress.finish_task(task_id(status.job_id))
