"""The REST API's state and the start-up maintenance for a running WebUI (used by
:class:`.extension.WebUIExtension`, once per process).

Adapters are trained into the data home (``adapters/NAME/``) and then published into the
WebUI's Lora folder as ``NAME.safetensors`` with its card sidecar: training outputs such as
``pytorch_lora_weights.safetensors`` never land in the Lora folder, where they would show up as
a second card. Deleting an adapter runs the Lora bridge's forget step first, under the WebUI's
queue lock, then the registry's erasure.
"""

import logging
import pathlib

from ..settings import api_local_without_auth, home_from_options, ingest_config_from_options, user_list

logger = logging.getLogger(__name__)


def build_state(webui, jobs=None):
    """The :class:`ApiState` for this WebUI.

    Args:
        webui (`WebUIModules`-like): attributes ``shared``, ``call_queue``, ``networks``,
            ``processing``, ``cache``, ``progress`` (WebUI modules; ``progress`` may be None) and
            ``addnet`` (or None).
        jobs (`JobManager`, *optional*): share one with the tab; a new one when None.

    Returns:
        `ApiState`
    """
    from ..api import ApiAuth, ApiState, parse_credentials
    from ..jobs import JobManager
    from .lora_bridge import webui_delete_hook

    options = webui.shared.opts.data
    home = home_from_options(options).ensure()
    lora_dir = pathlib.Path(webui.shared.cmd_opts.lora_dir)
    auth = ApiAuth(parse_credentials(getattr(webui.shared.cmd_opts, "api_auth", None) or ""),
                   allow_unauthenticated_local=api_local_without_auth(options),
                   train_users=user_list(options, "medical_lora_train_users"),
                   delete_users=user_list(options, "medical_lora_delete_users"))
    hook = webui_delete_hook(lora_dir, networks_module=webui.networks, shared_module=webui.shared,
                             processing_module=webui.processing, cache_module=webui.cache, addnet=webui.addnet,
                             lock=webui.call_queue.queue_lock)
    if jobs is None:
        mirror = None
        if getattr(webui, "progress", None) is not None:
            from .progress import WebUIProgressMirror

            mirror = WebUIProgressMirror(webui.shared, webui.progress)
        jobs = JobManager(observer=mirror)
    return ApiState(home=home, jobs=jobs, make_trainer=lambda config: _trainer(config, home),
                    auth=auth, lock=webui.call_queue.queue_lock, delete_hooks=(hook,),
                    ingest_config=ingest_config_from_options(options),
                    after_register=lambda exported, record: _after_register(webui, lora_dir, home, jobs, exported,
                                                                            record))


def _trainer(config, home):
    """A trainer on the checkpoint the WebUI has loaded (called on the job thread, inside the lock)."""
    from ..hosts.webui_host import WebUIHost
    from ..trainer.api import LoRATrainer

    return LoRATrainer(config, home, host=WebUIHost.from_shared())


def _after_register(webui, lora_dir, home, jobs, exported, record):
    """Publish into the Lora folder; then, unless the settings keep them, erase the training data
    (once no other waiting job trains on it: the running job is the one user left)."""
    from ..settings import keep_datasets

    _publish(webui, lora_dir, exported)
    if keep_datasets(webui.shared.opts.data) or not record.dataset_path:
        return
    if jobs.dataset_users(record.dataset_path) <= 1:
        from ..registry import Registry

        with Registry(home) as registry:
            registry.erase_dataset(record.dataset_path, actor=record.created_by)


def _publish(webui, lora_dir, exported):
    from .lora_bridge import publish_adapter

    return publish_adapter(exported, lora_dir, activation_text="", description=_description(exported),
                           networks_module=webui.networks, addnet=webui.addnet, shared_module=webui.shared)


def _description(exported):
    """Card text from the header's allow-listed facts (the purpose was screened at export).

    Ids are left out: ``lora-YYYYMMDD-...`` reads as a date to the personal-data screen.
    """
    metadata = exported.metadata
    return (f"medical-lora adapter for {metadata.get('medical_lora.purpose', 'an unstated purpose')}; "
            f"{metadata.get('ss_num_train_images', '?')} images, {metadata.get('ss_max_train_steps', '?')} steps")


def start_maintenance(state, unused_days=365, on_problems=None):
    """At start-up, in the background: the expiry sweep (which also finishes interrupted
    erasures), stale tab uploads, and the registry/disk consistency check. Returns the thread;
    problems are logged and handed to ``on_problems`` (the tab shows them), never raised into
    the WebUI's start."""
    import threading

    def run():
        from ..registry import Registry
        from ..ui.datasets import sweep_stale_uploads

        try:
            sweep_stale_uploads(state.home)
            with Registry(state.home) as registry:
                report = registry.expire(unused_days=unused_days, actor="webui:startup", hooks=state.delete_hooks)
                problems = registry.verify(actor="webui:startup")
            logger.info("medical-lora start-up: expiry sweep %s; %d consistency problem(s)",
                        {k: v for k, v in report.items() if isinstance(v, int)}, len(problems))
            for problem in problems:
                logger.warning("medical-lora registry: %s %s", problem.kind, problem.detail)
            notes = [f"Registry check: {problem.kind} {problem.target}: {problem.detail}" for problem in problems]
        except Exception as exc:
            logger.error("medical-lora start-up maintenance failed (%s)", type(exc).__name__)
            notes = [f"The start-up maintenance failed ({type(exc).__name__}); see the server log."]
        if on_problems is not None and notes:
            on_problems(notes)

    thread = threading.Thread(target=run, name="medical-lora-maintenance", daemon=True)
    thread.start()
    return thread
