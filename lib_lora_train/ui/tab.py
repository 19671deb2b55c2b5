"""Build the tab from :mod:`.layout` and wire its events to the handlers; no logic of its own.

Works on gradio 3.41 (WebUI 1.10) and 4.x: only components and arguments both have are used,
upload values are read as paths or temp-file wrappers, and the page polls a hidden button from
``javascript/medical_lora.js`` instead of relying on ``every=`` or ``gr.Timer``, so a reloaded
page re-attaches to a running job in both. Every element id and class starts with ``medlora``.
"""

import functools
import logging
import pathlib
import time

from ..errors import LoraTrainError
from . import layout, render
from .context import AccessDeniedError

logger = logging.getLogger(__name__)

EXTENSION_DIR = pathlib.Path(__file__).resolve().parents[2]
TITLE = "Medical LoRA"


def _user(request):
    return getattr(request, "username", None) if request is not None else None


def _failure(exc):
    """A readable message: product errors as they are (written to be shown), others by type only."""
    if isinstance(exc, (LoraTrainError, AccessDeniedError)):
        return str(exc) or type(exc).__name__
    if isinstance(exc, (MemoryError,)):
        return "out of memory: use fewer or smaller images"
    logger.error("medical-lora tab action failed (%s)", type(exc).__name__)
    return f"{type(exc).__name__}: the action failed unexpectedly; see the server log"


def _guarded(error_outputs):
    """Turn an exception into ``error_outputs(message_html)`` so the page shows it, never a trace."""
    def decorate(handler):
        @functools.wraps(handler)
        def run(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as exc:  # every failure must reach the user as a message
                return error_outputs(render.message(_failure(exc), "error"))
        return run
    return decorate


def build_tab(context):
    """The tab's ``gr.Blocks`` (the WebUI renders it inside its own page).

    Args:
        context (`UiContext`): the host's handlers, lock and access control.
    """
    import gradio as gr

    with gr.Blocks(analytics_enabled=False, elem_id="medlora_root") as blocks:
        notices = gr.HTML(render.notices(context.current_notices()), elem_id="medlora_notices")
        with gr.Tabs(elem_id="medlora_tabs"):
            with gr.Tab("Train", elem_id="medlora_tab_train"):
                data = layout.data_section(gr, context)
                captions = layout.captions_section(gr)
                record = layout.record_section(gr, context)
                train = layout.train_section(gr, context)
                result = layout.result_section(gr, context)
            with gr.Tab("Adapters", elem_id="medlora_tab_adapters"):
                adapters = layout.adapters_section(gr)
            with gr.Tab("Audit", elem_id="medlora_tab_audit"):
                audit = layout.audit_section(gr)
            if context.generate is not None and context.host_name == "standalone":
                with gr.Tab("Generate", elem_id="medlora_tab_generate"):
                    generate = layout.generate_section(gr)
                _wire_generate(context, generate)
        _wire_data(gr, context, data, captions, train)
        _wire_captions(context, data, captions)
        _wire_train(gr, context, data, record, train, result, notices)
        _wire_result(context, result)
        _wire_adapters(context, adapters)
        _wire_audit(context, audit)
    return blocks


def build_app(context):
    """The standalone page: the tab as the root, with the extension's CSS and JavaScript."""
    import gradio as gr

    css = (EXTENSION_DIR / "style.css").read_text(encoding="utf-8")
    script = (EXTENSION_DIR / "javascript" / "medical_lora.js").read_text(encoding="utf-8")
    tab = build_tab(context)
    with gr.Blocks(analytics_enabled=False, css=css, title=TITLE) as app:
        gr.Markdown(f"# {TITLE}\nDe-identify DICOM images, train a LoRA adapter, register it, erase it.")
        tab.render()
        _load_script(gr, app, "() => {\n" + script + "\n}")
    return app


def _load_script(gr, app, function_text):
    if gr.__version__.startswith("3."):
        app.load(None, None, None, _js=function_text)
    else:
        app.load(None, None, None, js=function_text)


def _wire_data(gr, context, data, captions, train):
    from .training import preset_values

    option_keys = [field.key for field in train.fields]
    preset_keys = ("lora_rank", "lora_alpha", "learning_rate", "max_steps", "snr_gamma")
    preset_targets = [train.options[option_keys.index(key)] for key in preset_keys]
    outputs = [data.message, data.summary, data.gallery, captions.table, data.upload_id, data.dataset_id]

    def scaled(preset, rows):
        values = preset_values(preset, len(rows or []))
        return ["" if values[key] is None else values[key] for key in preset_keys]

    for component in (data.files, data.folder):
        component.upload(_receiver(gr, context), [component, data.upload_id],
                         [data.message, data.upload_id, data.dataset_id, component])
    prepare = _preparer(gr, context)
    data.prepare.click(prepare, [data.upload_id, data.window, data.trigger, data.style],
                       outputs).then(scaled, [train.preset, captions.table], preset_targets)
    data.rerender.click(prepare, [data.upload_id, data.window, data.trigger, data.style], outputs)
    data.window.change(_rewindow(gr, prepare), [data.dataset_id, data.upload_id, data.window, data.trigger,
                                                data.style], outputs)
    data.discard.click(_discarder(gr, context), [data.upload_id], outputs)
    train.preset.change(scaled, [train.preset, captions.table], preset_targets)


def _receiver(gr, context):
    """On upload: take the files out of Gradio's temporary folder at once (or delete them for a
    refused user) and empty the upload box, so their names do not stay on the page."""
    from .datasets import discard_gradio_files, take_uploads

    @_guarded(lambda html: (html, gr.update(), gr.update(), None))
    def receive(files, upload_id, request: gr.Request):
        """A new upload starts a new dataset: the page forgets the previous one (which a job may use)."""
        files = files if isinstance(files, list) else [files]
        try:
            context.check_allowed(_user(request), "train")
        except AccessDeniedError:
            discard_gradio_files(files)
            raise
        new_upload = not upload_id
        upload_id = take_uploads(context.home, files, upload_id or None)
        count = len(list(context.home.root.joinpath("uploads", upload_id).glob("*.upload")))
        note = (f"{count} file(s) received and kept in the data home (named by position). Choose the window, "
                "then De-identify and prepare.")
        return render.message(note, "info"), upload_id, "" if new_upload else gr.update(), None

    return receive


def _preparer(gr, context):
    from .datasets import discard_uploads, prepare_uploads, thumbnails

    def keep(message_html):
        return (message_html, gr.update(), gr.update(), gr.update(), gr.update(), gr.update())

    @_guarded(keep)
    def prepare(upload_id, window, trigger, style, request: gr.Request):
        actor = context.check_allowed(_user(request), "train")
        if not upload_id:
            return keep(render.message("Upload DICOM files, a folder or a .zip first.", "error"))
        view = prepare_uploads(context.home, upload_id, _ingest_config(context, window, trigger, style), actor=actor)
        if not view.images:
            discard_uploads(context.home, upload_id)
            note = render.message("No file could be used (see the reasons below); the uploads were erased. Upload "
                                  "other files.", "error")
            return note, render.dataset_summary(view.report), render.gallery([]), [], "", ""
        note = render.message(f"{view.images} de-identified images prepared (dataset {view.dataset_id}, window "
                              f"'{window}'); captions were generated.", "ok")
        return (note, render.dataset_summary(view.report), render.gallery(thumbnails(context.home, view.dataset_id),
                dict(view.rows)), view.rows, view.upload_id, view.dataset_id)

    return prepare


def _rewindow(gr, prepare):
    """Choosing another window re-renders a prepared dataset at once (before one exists: nothing)."""
    def rewindow(dataset_id, upload_id, window, trigger, style, request: gr.Request):
        if not (dataset_id and upload_id):
            return (gr.update(),) * 6
        return prepare(upload_id, window, trigger, style, request)

    return rewindow


def _discarder(gr, context):
    from .datasets import discard_uploads

    @_guarded(lambda html: (html, gr.update(), gr.update(), gr.update(), gr.update(), gr.update()))
    def discard(upload_id):
        if upload_id:
            discard_uploads(context.home, upload_id)
        return (render.message("The uploaded files were erased from the data home.", "ok"), "", render.gallery([]),
                [], "", "")

    return discard


def _ingest_config(context, window, trigger, style):
    from ..config import IngestConfig

    base = context.state.ingest_config or IngestConfig()
    return IngestConfig.from_dict(dict(base.to_dict(), window=window or base.window,
                                       trigger_word=(trigger or "").strip(), style_phrase=(style or "").strip()))


def _wire_captions(context, data, captions):
    import gradio as gr

    from .datasets import save_captions

    def keep(message_html):
        return gr.update(), message_html

    @_guarded(keep)
    def save(dataset_id, rows, request: gr.Request):
        actor = context.check_allowed(_user(request), "train")
        outcome = save_captions(context.home, dataset_id, rows, actor=actor)
        if outcome.refused:
            refusals = "; ".join(f"row {number}: it contains {kind}" for number, kind in outcome.refused)
            note = render.message(f"Refused (the previous caption was kept): {refusals}. "
                                  f"{outcome.changed} other caption(s) saved.", "error")
        else:
            note = render.message(f"{outcome.changed} caption(s) saved.", "ok")
        return outcome.rows, note

    captions.save.click(save, [data.dataset_id, captions.table], [captions.table, captions.message])


def _wire_train(gr, context, data, record, train, result, notices):
    from .training import RECORD_KEYS, build_config, cancel_job, job_view, start_training

    record_inputs = [record[key] for key in RECORD_KEYS]
    poll_outputs = [train.progress, train.loss, result.result, result.adapter, notices]

    def polled(job_id):
        """Also refreshes the notices: start-up checks finish after the WebUI built the tab."""
        view = job_view(context, job_id or None)
        name = view.adapter.name if view.adapter is not None else ""
        return (render.progress(view.status, polled_at=f"{time.monotonic():.3f}"),
                render.loss_curve(view.losses) + render.sample(view.sample),
                render.result(view), name, render.notices(context.current_notices()))

    @_guarded(lambda html: (html, gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                            gr.update()))
    def start(values, request: gr.Request):
        """The page lets go of the upload and the dataset: a new upload makes a new dataset."""
        records = {key: values[record[key]] for key in RECORD_KEYS}
        options = {field.key: values[component] for field, component in zip(train.fields, train.options)}
        context.check_allowed(_user(request), "train")
        config = build_config(context, values[data.dataset_id], records, options)
        job_id = start_training(context, config, user=_user(request), upload_id=values[data.upload_id])
        return (render.message(f"Training job {job_id} started for {config.name}.", "ok"), job_id, "", "",
                *polled(job_id)[:2], "", "")

    @_guarded(lambda html: html)
    def cancel(job_id, request: gr.Request):
        status = cancel_job(context, job_id or None, user=_user(request))
        return render.message(f"Cancel requested for {status.job_id} ({status.state}; a running job stops within "
                              "one step).", "info")

    train.start.click(start, {data.dataset_id, data.upload_id, *record_inputs, *train.options},
                      [train.message, train.job_id, data.upload_id, data.dataset_id, train.progress, train.loss,
                       result.result, result.adapter])
    train.cancel.click(cancel, [train.job_id], [train.message])
    train.poll.click(_guarded(lambda html: (html, gr.update(), gr.update(), gr.update(), gr.update()))(polled),
                     [train.job_id], poll_outputs)


def _wire_result(context, result):
    import gradio as gr

    from .training import PREVIEW_WEIGHT, before_after

    if context.generate is None:
        return

    @_guarded(lambda html: html)
    def preview(adapter, prompt, request: gr.Request):
        from ..dataset.images import png_bytes

        if not adapter:
            return render.message("Train an adapter first; the preview compares images without and with it.", "info")
        without, with_adapter = before_after(context, adapter, prompt or "a ct scan")
        return render.before_after(png_bytes(without), png_bytes(with_adapter), f"<lora:{adapter}:{PREVIEW_WEIGHT}>")

    result.preview.click(preview, [result.adapter, result.prompt], [result.previews])


def _wire_adapters(context, adapters):
    import gradio as gr

    from .adapters import adapter_rows, delete_adapter, forget_patient

    def table():
        return render.adapters_table(adapter_rows(context.home))

    @_guarded(lambda html: (gr.update(), html, gr.update()))
    def delete(name, request: gr.Request):
        receipt = delete_adapter(context, name, user=_user(request))
        note = render.message(f"Adapter {name} was erased (file, sidecars, lists, caches, training data).", "ok")
        return table(), note, render.receipt(receipt)

    @_guarded(lambda html: (gr.update(), html, "", ""))
    def forget(patient_id, request: gr.Request):
        """The id box is emptied in the same update, whatever the outcome: it must not stay on the page."""
        receipt = forget_patient(context, patient_id, user=_user(request))
        count = len(receipt.get("adapters", []))
        note = render.message(f"Patient forgotten: {count} adapter(s) and their datasets erased.", "ok")
        return table(), note, render.receipt(receipt), ""

    adapters.refresh.click(_guarded(lambda html: html)(table), None, [adapters.table])
    adapters.delete.click(delete, [adapters.delete_name], [adapters.table, adapters.message, adapters.receipt])
    adapters.forget.click(forget, [adapters.patient],
                          [adapters.table, adapters.message, adapters.receipt, adapters.patient])


def _wire_audit(context, audit):
    from .adapters import audit_view

    audit.refresh.click(_guarded(lambda html: html)(lambda: render.audit(audit_view(context.home))), None,
                        [audit.view])


def _wire_generate(context, generate):
    import gradio as gr

    @_guarded(lambda html: html)
    def run(prompt, seed, request: gr.Request):
        from ..dataset.images import png_bytes
        from ..dataset.phi_check import check_caption
        from .generate import parse_prompt

        check_caption(parse_prompt(prompt)[0])
        image = context.generate(prompt, int(seed or 0), actor=context.actor(_user(request)))
        return render.generated(png_bytes(image), prompt)

    generate.button.click(run, [generate.prompt, generate.seed], [generate.image])
