"""The extension's life inside one WebUI process: one job queue and API state shared by the tab
and the REST API, the tab rebuilt on every "Reload UI" with the current settings, and the
start-up maintenance whose findings the tab shows.

The WebUI calls ``on_ui_tabs`` before ``on_app_started``; both go through one
:class:`WebUIExtension`, so a job started in the tab is visible to the API and the other way round.
"""

import logging
import threading

logger = logging.getLogger(__name__)

TAB_TITLE = "Medical LoRA"
TAB_ID = "medical_lora"
PREVIEW_STEPS = 20


class WebUIExtension:
    """Built once by ``scripts/medical_lora.py``.

    Args:
        modules_provider (`Callable[[], SimpleNamespace]`): the WebUI modules (``shared``,
            ``call_queue``, ``processing``, ``cache``, ``networks``, ``addnet``), resolved on
            first use, when the WebUI has loaded its scripts.
    """

    def __init__(self, modules_provider):
        self._modules_provider = modules_provider
        self._webui = None
        self._state = None
        self._guard = threading.Lock()
        self.startup_problems = []

    @property
    def webui(self):
        if self._webui is None:
            self._webui = self._modules_provider()
        return self._webui

    @property
    def state(self):
        """The :class:`ApiState` (job manager, auth, hooks), made once per process."""
        with self._guard:
            if self._state is None:
                from .app import build_state

                self._state = build_state(self.webui)
            return self._state

    def ui_tabs(self):
        """``on_ui_tabs`` callback: the tab, or a tab that says what is missing."""
        try:
            from ..ui.tab import build_tab

            return [(build_tab(self.ui_context()), TAB_TITLE, TAB_ID)]
        except ImportError as exc:  # a dependency install.py could not add
            return [(_missing_dependency_tab(exc), TAB_TITLE, TAB_ID)]

    def ui_context(self):
        """A :class:`UiContext` with the settings as they are now."""
        from ..hosts.webui_host import forge_refusal
        from ..settings import days_setting, user_list
        from ..ui.context import UiContext

        shared = self.webui.shared
        options = shared.opts.data
        cmd_opts = shared.cmd_opts
        auth = bool(getattr(cmd_opts, "gradio_auth", None) or getattr(cmd_opts, "gradio_auth_path", None))
        refusal = forge_refusal()
        self._refresh_api_users(options)
        return UiContext(state=self.state, host_name="forge" if refusal else "webui", auth_enabled=auth,
                         train_users=user_list(options, "medical_lora_train_users"),
                         delete_users=user_list(options, "medical_lora_delete_users"),
                         generate=None if refusal else WebUIPreview(self.webui, training_busy=self.state.jobs.busy),
                         training_refused=refusal,
                         notices=lambda: list(self.startup_problems),
                         expiry_days=days_setting(options, "medical_lora_expiry_days"), training_previews=False)

    def _refresh_api_users(self, options):
        """The API follows the access settings as the tab does, from each "Reload UI" on."""
        import dataclasses

        from ..settings import api_local_without_auth, user_list

        self.state.auth = dataclasses.replace(self.state.auth, train_users=user_list(options, "medical_lora_train_users"),
                                              delete_users=user_list(options, "medical_lora_delete_users"),
                                              allow_unauthenticated_local=api_local_without_auth(options))

    def app_started(self, demo, app):
        """``on_app_started`` callback: mount the API, start the maintenance sweep."""
        from ..api.routes import build_router
        from ..settings import days_setting
        from .app import start_maintenance

        app.include_router(build_router(self.state))
        logger.info("medical-lora API mounted at /medical-lora/v1")
        unused_days = days_setting(self.webui.shared.opts.data, "medical_lora_unused_days")
        return start_maintenance(self.state, unused_days=unused_days, on_problems=self.startup_problems.extend)


class WebUIPreview:
    """Render a prompt with the WebUI's own txt2img, so ``<lora:NAME:w>`` goes through the
    built-in Lora extension exactly as in the user's next generation. Holds the queue lock."""

    def __init__(self, webui, steps=PREVIEW_STEPS, training_busy=lambda: False):
        self.webui, self.steps, self.training_busy = webui, steps, training_busy

    def __call__(self, prompt, seed, actor=None):
        from ..ui.generate import held

        shared = self.webui.shared
        # Bounded only while training holds the queue for minutes; a generation ahead is waited for.
        with held(self.webui.call_queue.queue_lock, None if self.training_busy() else float("inf")):
            shared.state.begin(job="medical_lora_preview")
            try:
                return self._render(prompt, seed)
            finally:
                shared.state.end()

    def _render(self, prompt, seed):
        processing, shared = self.webui.processing, self.webui.shared
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=prompt, negative_prompt="", seed=int(seed), steps=self.steps,
            cfg_scale=7.0, width=512, height=512, batch_size=1, n_iter=1, sampler_name="Euler",
            do_not_save_samples=True, do_not_save_grid=True)
        try:
            return processing.process_images(p).images[0]
        finally:
            p.close()


def _missing_dependency_tab(exc):
    import gradio as gr

    from ..ui import render

    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.HTML(render.message(f"medical-lora cannot start: {type(exc).__name__}: {exc}. Install what is missing "
                               "by restarting the WebUI (install.py adds it), or see the extension's README.", "error"))
    return blocks
