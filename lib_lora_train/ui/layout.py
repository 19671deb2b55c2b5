"""The tab's components, section by section, with labels and ``medlora_`` ids; no events.

Each ``*_section`` function creates one step's components inside the current Gradio context and
returns them by name; :mod:`.tab` wires them to the handlers.
"""

from . import render

WINDOW_LABEL = "Window (CT presets apply Hounsfield windows; 'file' uses the file's own)"
OPTIONS_PER_ROW = 3


def _choices():
    from ..config import WINDOW_CHOICES

    return list(WINDOW_CHOICES)


class Section(dict):
    """Components of one section by name (attribute access for readability)."""

    __getattr__ = dict.__getitem__


def data_section(gr, context):
    from ..config import IngestConfig

    defaults = context.state.ingest_config or IngestConfig()
    s = Section()
    gr.Markdown("### 1. Data", elem_classes=["medlora-step"])
    with gr.Row():
        s["files"] = gr.File(label="DICOM files or .zip archives (extensionless files are fine)",
                             file_count="multiple", elem_id="medlora_files")
        s["folder"] = gr.File(label="or a folder of DICOM files", file_count="directory", elem_id="medlora_folder")
    with gr.Row():
        s["window"] = gr.Dropdown(_choices(), value=defaults.window, label=WINDOW_LABEL, elem_id="medlora_window")
        s["trigger"] = gr.Textbox(value=defaults.trigger_word, label="Trigger word (starts every caption)",
                                  elem_id="medlora_trigger")
        s["style"] = gr.Textbox(value=defaults.style_phrase, label="Style phrase (ends every caption)",
                                elem_id="medlora_style")
    with gr.Row():
        s["prepare"] = gr.Button("De-identify and prepare", variant="primary", elem_id="medlora_prepare")
        s["rerender"] = gr.Button("Apply window / trigger / style again", elem_id="medlora_rerender")
        s["discard"] = gr.Button("Discard uploads", elem_id="medlora_discard")
    s["message"] = gr.HTML("", elem_id="medlora_data_message")
    s["summary"] = gr.HTML("", elem_id="medlora_summary")
    s["gallery"] = gr.HTML(render.gallery([]), elem_id="medlora_gallery")
    s["upload_id"] = gr.State("")
    s["dataset_id"] = gr.State("")
    return s


def captions_section(gr):
    s = Section()
    gr.Markdown("### 2. Captions", elem_classes=["medlora-step"])
    s["table"] = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], type="array",
                              col_count=(2, "fixed"), interactive=True, label="Captions (edit, then save)",
                              elem_id="medlora_captions")
    s["save"] = gr.Button("Save captions", elem_id="medlora_save_captions")
    s["message"] = gr.HTML("", elem_id="medlora_caption_message")
    return s


def record_section(gr, context):
    from .training import default_expiry

    s = Section()
    gr.Markdown("### 3. Purpose and ownership (recorded in the registry)", elem_classes=["medlora-step"])
    with gr.Row():
        s["name"] = gr.Textbox(label="Adapter name (used as <lora:NAME:0.7>)", elem_id="medlora_name")
        s["purpose"] = gr.Textbox(label="Purpose", elem_id="medlora_purpose")
        s["department"] = gr.Textbox(label="Department", elem_id="medlora_department")
    with gr.Row():
        s["owner"] = gr.Textbox(label="Responsible person or role", elem_id="medlora_owner")
        s["legal_basis"] = gr.Textbox(label="Legal basis", value="GDPR Art. 6(1)(e), 9(2)(j)",
                                      elem_id="medlora_legal_basis")
        s["dpia_reference"] = gr.Textbox(label="DPIA reference", elem_id="medlora_dpia")
        s["expires"] = gr.Textbox(label="Expires (YYYY-MM-DD)", value=default_expiry(days=context.expiry_days),
                                  elem_id="medlora_expires")
    return s


def _option_component(gr, field):
    common = {"label": field.label, "info": field.help[:160], "elem_id": f"medlora_opt_{field.key}"}
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=field.default, **common)
    if field.kind == "bool":
        return gr.Checkbox(value=bool(field.default), **common)
    if field.kind in ("int", "float") and not field.optional:
        return gr.Number(value=field.default, precision=0 if field.kind == "int" else None, **common)
    placeholder = "empty: not set" if field.optional else None
    return gr.Textbox(value="" if field.default is None else str(field.default), placeholder=placeholder, **common)


def train_section(gr, context):
    from .training import PRESETS, option_fields

    s = Section()
    gr.Markdown("### 4. Train", elem_classes=["medlora-step"])
    s["preset"] = gr.Radio([(p.label, key) for key, p in PRESETS.items()] if _tuple_choices(gr) else list(PRESETS),
                           value="standard", label="Preset (scaled to the number of images)",
                           elem_id="medlora_preset")
    s["fields"] = option_fields(context.training_previews)
    with gr.Accordion("Advanced: every trainer option", open=False, elem_id="medlora_advanced"):
        s["options"] = []
        for start in range(0, len(s["fields"]), OPTIONS_PER_ROW):
            with gr.Row():
                s["options"] += [_option_component(gr, field) for field in s["fields"][start:start + OPTIONS_PER_ROW]]
    with gr.Row():
        s["start"] = gr.Button("Start training", variant="primary", elem_id="medlora_start",
                               interactive=context.training_refused is None)
        s["cancel"] = gr.Button("Cancel", variant="stop", elem_id="medlora_cancel")
    if context.training_refused:
        gr.HTML(render.message(context.training_refused, "error"))
    s["message"] = gr.HTML("", elem_id="medlora_train_message")
    s["progress"] = gr.HTML(render.progress(None), elem_id="medlora_progress")
    s["loss"] = gr.HTML(render.loss_curve([]), elem_id="medlora_loss")
    s["poll"] = gr.Button("Refresh progress", elem_id="medlora_poll", elem_classes=["medlora-hidden"])
    s["job_id"] = gr.State("")
    return s


def _tuple_choices(gr):
    """(label, value) choices exist from gradio 3.40 on; older ones take values only."""
    major, minor = (int(part) for part in gr.__version__.split(".")[:2])
    return (major, minor) >= (3, 40)


def result_section(gr, context):
    s = Section()
    gr.Markdown("### 5. Result", elem_classes=["medlora-step"])
    s["result"] = gr.HTML("", elem_id="medlora_result")
    s["adapter"] = gr.State("")
    if context.generate is not None:
        with gr.Row():
            s["prompt"] = gr.Textbox(label="Preview prompt (no personal data)", elem_id="medlora_preview_prompt")
            s["preview"] = gr.Button("Before / after preview", elem_id="medlora_preview_button")
        s["previews"] = gr.HTML("", elem_id="medlora_previews")
    return s


def adapters_section(gr):
    s = Section()
    s["refresh"] = gr.Button("Refresh list", elem_id="medlora_adapters_refresh")
    s["table"] = gr.HTML("", elem_id="medlora_adapters")
    s["delete_name"] = gr.Textbox(label="Adapter to delete", elem_id="medlora_delete_name",
                                  elem_classes=["medlora-hidden"])
    s["delete"] = gr.Button("Delete adapter", elem_id="medlora_delete_button", elem_classes=["medlora-hidden"])
    s["message"] = gr.HTML("", elem_id="medlora_delete_message")
    gr.Markdown("#### Forget a patient\nErases every adapter and dataset made from this patient's images. The id "
                "is turned into its keyed pseudonym at once; it is never stored or logged.")
    with gr.Row():
        s["patient"] = gr.Textbox(label="Patient ID (DICOM PatientID)", type="password", elem_id="medlora_patient")
        s["forget"] = gr.Button("Forget this patient", variant="stop", elem_id="medlora_forget")
    s["receipt"] = gr.HTML("", elem_id="medlora_receipt")
    return s


def audit_section(gr):
    s = Section()
    s["refresh"] = gr.Button("Refresh and verify the audit log", elem_id="medlora_audit_refresh")
    s["view"] = gr.HTML("", elem_id="medlora_audit")
    return s


def generate_section(gr):
    s = Section()
    with gr.Row():
        s["prompt"] = gr.Textbox(label="Prompt (add <lora:NAME:0.7> to apply an adapter)", elem_id="medlora_gen_prompt")
        s["seed"] = gr.Number(value=1234, precision=0, label="Seed", elem_id="medlora_gen_seed")
    s["button"] = gr.Button("Generate", variant="primary", elem_id="medlora_gen_button")
    s["image"] = gr.HTML("", elem_id="medlora_gen_image")
    return s
