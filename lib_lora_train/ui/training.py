"""Tab steps 3 to 5: purpose and ownership, presets and options, the job, the result.

The form's values become a :class:`TrainConfig` here, validated in one place (the dataclass),
and the job goes to the host's one :class:`JobManager`, the same queue the REST API uses.
"""

import dataclasses
import datetime
import logging

from ..errors import ConfigError, InputError
from ..naming import ADAPTER_NAME_RULE, is_adapter_name

logger = logging.getLogger(__name__)

PREVIEW_WEIGHT = 0.7
PREVIEW_SEED = 1234
DEFAULT_EXPIRY_DAYS = 365
# Record fields the form asks for (TrainConfig keys), in form order.
RECORD_KEYS = ("name", "purpose", "department", "owner", "legal_basis", "dpia_reference", "expires")
# Options that render previews during training: only where the host can render (standalone).
SAMPLE_KEYS = ("sample_prompt", "sample_every_epochs")
# TrainConfig keys never shown: paths and ids the tab sets itself, and the record fields above.
HIDDEN_KEYS = frozenset({"base_model", "train_data_dir", "metadata_path", "output_dir", "resume_from_checkpoint",
                         *RECORD_KEYS})


@dataclasses.dataclass(frozen=True)
class Preset:
    """A starting point scaled to the dataset: ``steps_per_image`` clamped to ``[min, max]``."""

    label: str
    lora_rank: int
    learning_rate: float
    steps_per_image: int
    min_steps: int
    max_steps: int
    snr_gamma: float | None = None


PRESETS = {
    "quick": Preset("Quick: a first look, minutes on a GPU", 4, 2e-4, 10, 100, 400),
    "standard": Preset("Standard: the usual choice", 8, 1e-4, 30, 300, 1500),
    "thorough": Preset("Thorough: more steps and capacity", 16, 1e-4, 60, 800, 4000, snr_gamma=5.0),
}


def preset_values(preset_name, images):
    """The option values a preset sets for a dataset of ``images`` images.

    Returns:
        `dict[str, object]`: TrainConfig keys (``lora_rank``, ``lora_alpha``,
        ``learning_rate``, ``max_steps``, ``snr_gamma``).
    """
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    steps = min(preset.max_steps, max(preset.min_steps, preset.steps_per_image * max(1, int(images or 0))))
    return {"lora_rank": preset.lora_rank, "lora_alpha": float(preset.lora_rank), "learning_rate": preset.learning_rate,
            "max_steps": steps, "snr_gamma": preset.snr_gamma}


@dataclasses.dataclass(frozen=True)
class OptionField:
    """One trainer option as the "advanced" accordion shows it.

    Attributes:
        key (`str`): the TrainConfig key.
        kind (`str`): ``choice``, ``bool``, ``int``, ``float``, ``list`` or ``text``.
        default: the TrainConfig default (lists as comma-separated text).
        help (`str`): the field's help text.
        choices (`tuple`): for ``choice``.
        optional (`bool`): may be left empty (None).
    """

    key: str
    kind: str
    default: object
    help: str
    choices: tuple = ()
    optional: bool = False

    @property
    def label(self):
        return self.key.replace("_", " ")


def option_fields(training_previews=True):
    """Every trainer option except paths and record fields, from the dataclass itself; without
    the preview options where the host cannot render during training."""
    from ..train_config import TRAIN_CHOICES, TrainConfig

    fields = []
    for field in dataclasses.fields(TrainConfig):
        if field.name in HIDDEN_KEYS or (not training_previews and field.name in SAMPLE_KEYS):
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        type_text = getattr(field.type, "__name__", None) or str(field.type)  # "int", "int | None"
        optional = "None" in type_text
        if field.name in TRAIN_CHOICES:
            kind = "choice"
        elif type_text.startswith("bool"):
            kind = "bool"
        elif type_text.startswith("int"):
            kind = "int"
        elif type_text.startswith("float"):
            kind = "float"
        elif type_text.startswith("tuple"):
            kind, default = "list", ", ".join(default)
        else:
            kind = "text"
        fields.append(OptionField(field.name, kind, default, field.metadata.get("help", ""),
                                  TRAIN_CHOICES.get(field.name, ()), optional))
    return fields


def option_value(field, raw):
    """A form value as the TrainConfig expects it (empty optional fields become None)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if field.optional:
            return None
        if field.kind == "list":
            return ()
        raise ConfigError(f"{field.label} must not be empty ({field.help})")
    if field.kind in ("int", "float"):
        return _number(field, raw)
    if field.kind == "list":
        return tuple(part.strip() for part in str(raw).split(",") if part.strip())
    if field.kind == "text":
        return str(raw).strip()
    return raw


def _number(field, raw):
    try:
        value = float(raw)
        whole = int(value) if field.kind == "int" else None
    except (ValueError, OverflowError):  # "abc", "1e400", "inf" as a whole number
        raise ConfigError(f"{field.label} must be a number ({field.help})") from None
    if field.kind == "float":
        return value
    if value != whole:
        raise ConfigError(f"{field.label} must be a whole number, not {raw}")
    return whole


def default_expiry(today=None, days=DEFAULT_EXPIRY_DAYS):
    """The form's default expiry date, ``days`` from today (YYYY-MM-DD)."""
    today = today or datetime.date.today()
    return (today + datetime.timedelta(days=days)).isoformat()


def build_config(context, dataset_id, record, options):
    """The validated :class:`TrainConfig` for one tab submission.

    Args:
        context (`UiContext`): the host.
        dataset_id (`str`): the prepared dataset.
        record (`dict`): the ``RECORD_KEYS`` values from the form.
        options (`dict`): option key -> raw form value (see :func:`option_fields`).

    Raises:
        ConfigError: a value is invalid or a record field is missing (the message names it).
        InputError: no dataset prepared, or the name is taken.
    """
    import pathlib

    from ..train_config import TrainConfig
    from ..workflow import check_registry_fields
    from .datasets import dataset_folder

    folder = dataset_folder(context.home, dataset_id)
    name = (record.get("name") or "").strip()
    if not is_adapter_name(name):
        raise ConfigError(f"adapter name {name!r} cannot be used in <lora:NAME:0.7>: use {ADAPTER_NAME_RULE}")
    check_name_free(context, name)
    by_key = {field.key: field for field in option_fields(context.training_previews)}
    values = {key: option_value(by_key[key], raw) for key, raw in options.items() if key in by_key}
    values.update({key: (str(record.get(key) or "").strip() or None) for key in RECORD_KEYS})
    output_root = pathlib.Path(context.state.output_root or context.home.adapters_dir)
    values.update(train_data_dir=str(folder), output_dir=str(output_root / name))
    config = TrainConfig.from_dict(values)
    check_registry_fields(config)
    if config.expires is None:
        raise ConfigError("expires is required: the date (YYYY-MM-DD) after which the adapter is reviewed or erased")
    return config


def check_name_free(context, name):
    """Refuse a name an active adapter, or an existing output folder, already has."""
    import pathlib

    from ..workflow import check_adapter_name_free

    check_adapter_name_free(context.home, pathlib.Path(context.state.output_root or context.home.adapters_dir), name)


def start_training(context, config, *, user, upload_id=None):
    """Queue the job on the host's job manager; erase the kept uploads (the dataset suffices).

    Returns:
        `str`: the job id.

    Raises:
        AccessDeniedError, JobBusyError, and ``training_refused`` as :class:`ConfigError`.
    """
    from .datasets import discard_uploads

    actor = context.check_allowed(user, "train")
    if context.training_refused:
        raise ConfigError(context.training_refused)
    state = context.state
    job_id = state.jobs.submit(lambda: state.make_trainer(config), actor=actor, lock=state.lock,
                               after_register=state.after_register, name=config.name, output_dir=config.output_dir,
                               dataset_dir=config.train_data_dir)
    if upload_id:
        discard_uploads(context.home, upload_id)
    return job_id


@dataclasses.dataclass(frozen=True)
class JobView:
    """A job as the tab shows it: status, the loss so far and, once done, the adapter.

    Attributes:
        status (`JobStatus | None`): None when no job ran in this process.
        losses (`list[float]`): one per step.
        adapter (`AdapterRecord | None`): the registered adapter of a finished job.
        sample (`pathlib.Path | None`): the newest ``sample_prompt`` preview, while it exists.
    """

    status: object
    losses: list
    adapter: object = None
    sample: object = None

    @property
    def snippet(self):
        return f"<lora:{self.adapter.name}:{PREVIEW_WEIGHT}>" if self.adapter is not None else ""


def job_view(context, job_id=None):
    """The given job, else the latest one (a reloaded page re-attaches to it)."""
    from ..errors import JobNotFoundError
    from ..registry import AdapterNotFoundError, Registry

    jobs = context.state.jobs
    try:
        status = jobs.status(job_id) if job_id else jobs.latest()
    except JobNotFoundError:
        status = jobs.latest()
    if status is None:
        return JobView(None, [])
    adapter = None
    if status.state == "done" and status.registry_id:
        with Registry(context.home) as registry:
            try:
                adapter = registry.get(status.registry_id)
            except AdapterNotFoundError:
                adapter = None
    sample = jobs.latest_sample(status.job_id)
    return JobView(status, jobs.losses(status.job_id), adapter, sample if sample and sample.is_file() else None)


def cancel_job(context, job_id, *, user):
    """Ask the given (else the latest) job to stop; returns its status.

    Raises:
        InputError: there is no job, or it has already finished.
    """
    context.check_allowed(user, "train")
    status = context.state.jobs.status(job_id) if job_id else context.state.jobs.latest()
    if status is None:
        raise InputError("there is no training job to cancel", code="no_job")
    if status.finished:
        raise InputError(f"training job {status.job_id} has already finished ({status.state})", code="job_finished")
    return context.state.jobs.cancel(status.job_id)


def before_after(context, adapter_name, prompt, seed=PREVIEW_SEED, weight=PREVIEW_WEIGHT):
    """Two images of one prompt and seed: without and with ``<lora:NAME:weight>``.

    Raises:
        ConfigError: the host cannot generate (no ``generate``), or the prompt holds personal
            data patterns.
    """
    from ..dataset.phi_check import check_caption

    if context.generate is None:
        raise ConfigError("previews are not available in this host")
    prompt = " ".join((prompt or "").split())
    check_caption(prompt)
    without = context.generate(prompt, seed)
    with_adapter = context.generate(f"{prompt} <lora:{adapter_name}:{weight}>", seed)
    return without, with_adapter
