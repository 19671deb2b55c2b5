"""Stand-in for WebUI 1.10.1 ``modules/progress.py``: the current task.

``start_task(id_task)`` makes it ``current_task`` and drops it from ``pending_tasks``;
``finish_task(id_task)`` clears ``current_task`` if it is that task and appends it to
``finished_tasks`` (the real one keeps the last few). ``/internal/progress`` answers
``active`` for ``current_task`` only.
"""

current_task = None
pending_tasks = {}
finished_tasks = []


def start_task(id_task):
    global current_task

    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task

    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
