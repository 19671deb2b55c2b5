"""The training configuration: :class:`TrainConfig` and :func:`load_config` for YAML files.

One frozen dataclass, validated once in ``__post_init__``; help texts live in the field
metadata. Both YAML shapes of the seed project load: nested (``model_config:``,
``train_config:``, optionally ``data_config:`` and ``output_config:``) and flat.
"""

import dataclasses
import datetime
import logging
import math
import os
import re

from .config import (
    _check_bool,
    _check_choice,
    _check_int,
    _from_dict,
    _help,
    _reject_unknown,
)
from .errors import ConfigError
from .naming import ADAPTER_NAME_RULE, is_adapter_name

logger = logging.getLogger(__name__)

# TrainConfig validation tables, read by ``TrainConfig.__post_init__`` only.
FREEZABLE_MODULES = ("vae", "text_encoder", "unet")
_TRAIN_CHOICES = {
    "prediction_type": ("auto", "epsilon", "v_prediction"),
    "mixed_precision": ("auto", "no", "fp16", "bf16"),
    "lr_scheduler": ("constant", "constant_with_warmup", "cosine", "linear"),
    "optimizer": ("adamw", "adamw8bit", "auto"),
    "save_dtype": ("fp16", "bf16", "fp32"),
}
TRAIN_CHOICES = _TRAIN_CHOICES  # public name for front ends building option forms
# key: (minimum, maximum or None, may be null)
_TRAIN_INTS = {
    "resolution": (64, 2048, True),
    "lora_rank": (1, 1024, False),
    "batch_size": (1, 256, False),
    "gradient_accumulation_steps": (1, None, False),
    "epochs": (1, None, False),
    "max_steps": (1, None, True),
    "lr_warmup_steps": (0, None, False),
    "seed": (0, 2**32 - 1, False),
    "early_stopping_patience": (1, None, True),
    "checkpointing_steps": (1, None, True),
    "sample_every_epochs": (1, None, True),
}
# key: (test, what is allowed, may be null)
_TRAIN_FLOATS = {
    "lora_alpha": (lambda x: x > 0, "greater than 0", False),
    "lora_dropout": (lambda x: 0 <= x < 1, "at least 0 and less than 1", False),
    "learning_rate": (lambda x: 0 < x < 1, "greater than 0 and less than 1", False),
    "adam_weight_decay": (lambda x: 0 <= x <= 1, "between 0 and 1", False),
    "max_grad_norm": (lambda x: x > 0, "greater than 0", False),
    "snr_gamma": (lambda x: x > 0, "greater than 0, e.g. 5.0", True),
    "noise_offset": (lambda x: 0 <= x <= 1, "between 0 and 1", False),
    "early_stopping_min_delta": (lambda x: x >= 0, "at least 0", False),
}
_TRAIN_BOOLS = ("random_flip", "train_text_encoder", "gradient_checkpointing", "cache_latents")
_TRAIN_MODULE_LISTS = ("target_modules", "text_encoder_target_modules")
_TRAIN_REQUIRED_TEXT = ("base_model", "output_dir")
_TRAIN_OPTIONAL_TEXT = ("train_data_dir", "metadata_path", "resume_from_checkpoint", "sample_prompt")
_REGISTRY_TEXT = ("purpose", "owner", "department", "legal_basis", "dpia_reference")
_REGISTRY_TEXT_MAX = 200
_ADAPTER_NAME_RULE = ADAPTER_NAME_RULE + " (no spaces, ':', '<', '>', '/' or '\\')"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of the LoRA training step (``train``), grouped by stage.

    Float fields also accept numeric text because PyYAML (YAML 1.1) reads ``1e-4`` as the
    string ``"1e-4"``; they are stored as ``float``. Lists become tuples. Base weights are
    always frozen: only the LoRA adapters train.
    """

    # model
    base_model: str = _help(
        "'embedded' for the tiny built-in model (demos, tests), or a local single-file Stable Diffusion "
        "checkpoint (.safetensors or .ckpt); checked when loading.",
        default="embedded",
    )
    prediction_type: str = _help(
        "What the UNet predicts: 'auto' (from the checkpoint), 'epsilon' (SD 1.x) or 'v_prediction' (SD 2.x 768).",
        default="auto",
    )
    device: str = _help("Where to train: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.", default="auto")
    mixed_precision: str = _help(
        "Precision of the frozen weights: 'auto' (fp16 on CUDA, none on CPU), 'no', 'fp16' or 'bf16' "
        "(fp16/bf16 need CUDA); LoRA weights always train in fp32.",
        default="auto",
    )
    # data
    train_data_dir: str | None = _help(
        "Prepared dataset folder (images/ and metadata.csv, as written by 'prepare').", default=None
    )
    metadata_path: str | None = _help("Captions file; default: <train_data_dir>/metadata.csv.", default=None)
    resolution: int | None = _help(
        "Training image side in pixels, a multiple of 8 from 64 to 2048; empty: the model's native size.",
        default=None,
    )
    random_flip: bool = _help(
        "Mirror images at random for augmentation. Off by default: flipping swaps left and right, "
        "which changes laterality in medical images (situs, side of a lesion).",
        default=False,
    )
    # lora
    lora_rank: int = _help("LoRA rank (dimension), 1 to 1024; higher learns more and files grow.", default=8)
    lora_alpha: float = _help(
        "LoRA alpha; updates are scaled by alpha/rank, and the exported file stores it.", default=16.0
    )
    lora_dropout: float = _help("Dropout on the LoRA input, at least 0 and less than 1.", default=0.0)
    target_modules: tuple = _help(
        "UNet attention layers that get adapters (diffusers names).", default=("to_q", "to_k", "to_v", "to_out.0")
    )
    train_text_encoder: bool = _help(
        "Also train adapters on the CLIP text encoder (set when freeze_modules omits text_encoder).", default=False
    )
    text_encoder_target_modules: tuple = _help(
        "Text-encoder layers that get adapters when train_text_encoder is on.",
        default=("q_proj", "k_proj", "v_proj", "out_proj"),
    )
    freeze_modules: tuple = _help(
        "Models whose base weights stay frozen: must include vae and unet (only LoRA adapters train); "
        "leaving out text_encoder turns train_text_encoder on.",
        default=FREEZABLE_MODULES,
    )
    # training
    batch_size: int = _help("Images per step, 1 to 256.", default=1)
    gradient_accumulation_steps: int = _help(
        "Steps whose gradients add up before one update; the effective batch is batch_size times this.", default=1
    )
    epochs: int = _help("Passes over the dataset.", default=10)
    max_steps: int | None = _help("Stop after this many updates; when set it overrides epochs.", default=None)
    learning_rate: float = _help("Peak learning rate, greater than 0 and less than 1 (1e-4 is typical).", default=1e-4)
    lr_scheduler: str = _help(
        "Learning-rate schedule: 'constant', 'constant_with_warmup', 'cosine' or 'linear'.", default="constant"
    )
    lr_warmup_steps: int = _help("Updates of linear warm-up (ignored by 'constant').", default=0)
    optimizer: str = _help(
        "'adamw', 'adamw8bit' (bitsandbytes, CUDA), or 'auto': 8-bit when bitsandbytes is installed and on CUDA.",
        default="adamw",
    )
    adam_weight_decay: float = _help("AdamW weight decay, between 0 and 1.", default=1e-2)
    max_grad_norm: float = _help("Clip the gradient norm of the LoRA parameters to this.", default=1.0)
    gradient_checkpointing: bool = _help("Recompute activations to save memory, at about 30% more time.", default=False)
    snr_gamma: float | None = _help(
        "Min-SNR loss weighting gamma (5.0 is usual; https://arxiv.org/abs/2303.09556); empty: plain MSE.",
        default=None,
    )
    noise_offset: float = _help("Noise offset, 0 to 1 (0.05 helps very dark or bright images).", default=0.0)
    seed: int = _help("Random seed for noise, dropout and shuffling, so a run can be repeated.", default=42)
    early_stopping_patience: int | None = _help(
        "Stop when the epoch loss has not improved for this many epochs; empty: never.", default=None
    )
    early_stopping_min_delta: float = _help("Smallest loss decrease that counts as an improvement.", default=0.0)
    checkpointing_steps: int | None = _help(
        "Save a resumable checkpoint every this many updates; empty: none.", default=None
    )
    resume_from_checkpoint: str | None = _help(
        "Resume from 'latest' (newest checkpoint in output_dir) or a checkpoint path.", default=None
    )
    cache_latents: bool = _help("Encode every image with the VAE once, before training, to save time.", default=True)
    # output
    output_dir: str = _help(
        "Folder for the adapter and checkpoints; its last part is the adapter name unless name is set.",
        default="./output/medical_art_lora",
    )
    name: str | None = _help(
        "Adapter name, typed as <lora:NAME:1.0> in prompts: " + _ADAPTER_NAME_RULE
        + "; empty: the last part of output_dir.",
        default=None,
    )
    save_dtype: str = _help("Precision of the saved adapter: 'fp16', 'bf16' or 'fp32'.", default="fp16")
    sample_prompt: str | None = _help("Prompt for preview images during training; empty: no previews.", default=None)
    sample_every_epochs: int | None = _help(
        "Render the sample prompt every this many epochs; empty: only after the last one.", default=None)
    # registry / GDPR record (Art. 30 records of processing)
    purpose: str | None = _help("Why the adapter is trained (purpose limitation).", default=None)
    owner: str | None = _help("Person or role accountable for the adapter.", default=None)
    department: str | None = _help("Department that owns the adapter.", default=None)
    legal_basis: str | None = _help("Legal basis of the processing, e.g. 'GDPR Art. 6(1)(e), 9(2)(j)'.", default=None)
    dpia_reference: str | None = _help("Reference of the data-protection impact assessment.", default=None)
    expires: str | None = _help("Date (YYYY-MM-DD) after which the adapter must be reviewed or erased.", default=None)

    def __post_init__(self):
        for key, allowed in _TRAIN_CHOICES.items():
            _check_choice(key, getattr(self, key), allowed)
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(self.device))):
            raise ConfigError(f"device={self.device!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N")
        for key, (minimum, maximum, optional) in _TRAIN_INTS.items():
            _check_int(key, getattr(self, key), minimum, maximum, optional)
        if self.resolution is not None and self.resolution % 8:
            raise ConfigError(f"resolution={self.resolution} must be a multiple of 8 (the VAE downsamples by 8)")
        for key, rule in _TRAIN_FLOATS.items():
            object.__setattr__(self, key, _checked_float(key, getattr(self, key), *rule))
        for key in _TRAIN_BOOLS:
            _check_bool(key, getattr(self, key))
        for key in _TRAIN_MODULE_LISTS:
            object.__setattr__(self, key, _checked_names(key, getattr(self, key)))
        for key in _TRAIN_REQUIRED_TEXT + _TRAIN_OPTIONAL_TEXT:
            _check_text(key, getattr(self, key), optional=key in _TRAIN_OPTIONAL_TEXT)
        for key in _REGISTRY_TEXT:
            _check_text(key, getattr(self, key), optional=True, max_length=_REGISTRY_TEXT_MAX)
        object.__setattr__(self, "expires", _checked_date("expires", self.expires))
        self._check_freeze_modules()
        self._check_cross_fields()
        self.adapter_name()

    def _check_freeze_modules(self):
        frozen = _checked_names("freeze_modules", self.freeze_modules, FREEZABLE_MODULES)
        for module in ("unet", "vae"):
            if module not in frozen:
                raise ConfigError(
                    f"freeze_modules={list(frozen)!r}: full fine-tuning of {module!r} is not supported; "
                    f"only LoRA adapters are trained; keep {module!r} in freeze_modules"
                )
        object.__setattr__(self, "freeze_modules", frozen)
        if "text_encoder" not in frozen:
            # The seed's way to ask for text-encoder training: its base weights still stay frozen.
            object.__setattr__(self, "train_text_encoder", True)

    def _check_cross_fields(self):
        if self.max_steps is not None and self.lr_warmup_steps > self.max_steps:
            raise ConfigError(
                f"lr_warmup_steps={self.lr_warmup_steps} is more than max_steps={self.max_steps}; "
                "the learning rate would never reach its peak"
            )
        if self.sample_every_epochs is not None and not self.sample_prompt:
            raise ConfigError(f"sample_every_epochs={self.sample_every_epochs} needs a sample_prompt")

    def adapter_name(self):
        """Return the adapter's ``<lora:NAME>`` alias: ``name``, else the last part of ``output_dir``.

        Returns:
            `str`: e.g. ``"medical_art_lora"`` for the default ``output_dir``.

        Raises:
            `ConfigError`: when ``name`` is unset and ``output_dir`` ends in an invalid alias.
        """
        if self.name is not None:
            if not isinstance(self.name, str) or not is_adapter_name(self.name):
                raise ConfigError(
                    f"name={self.name!r} is not a valid adapter name (typed as <lora:NAME:1.0> in prompts); "
                    f"use {_ADAPTER_NAME_RULE}"
                )
            return self.name
        derived = os.path.basename(os.path.normpath(self.output_dir))
        if not is_adapter_name(derived):
            raise ConfigError(
                f"output_dir ends in {derived!r}, which is not a valid adapter name; rename the folder "
                f"or set name; use {_ADAPTER_NAME_RULE}"
            )
        return derived

    def resolved_metadata_path(self):
        """Return the captions file: ``metadata_path``, else ``<train_data_dir>/metadata.csv``.

        Raises:
            `ConfigError`: when neither is set, so there is nothing to train on.
        """
        if self.metadata_path is not None:
            return self.metadata_path
        if self.train_data_dir is None:
            raise ConfigError("no training data: set train_data_dir (a folder written by 'prepare') or metadata_path")
        return os.path.join(self.train_data_dir, "metadata.csv")

    @classmethod
    def from_dict(cls, values, strict=True):
        """Build from a mapping, e.g. a stored :meth:`to_dict`.

        Args:
            values (`dict`): Field names to values.
            strict (`bool`): Reject unknown keys with a did-you-mean hint; when `False` (a registry
                row written by another version) drop them with a warning instead.
        """
        if not strict:
            known = {f.name for f in dataclasses.fields(cls)}
            for key in sorted(set(values) - known, key=str):
                logger.warning("ignoring unknown TrainConfig key %r", key)
            values = {key: value for key, value in values.items() if key in known}
        return _from_dict(cls, values)

    def to_dict(self):
        """Plain-JSON form (tuples as lists), stored with each adapter."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(self).items()}


def _checked_float(key, value, test, allowed, optional):
    if optional and value is None:
        return None
    try:
        # bool is an int; text comes from YAML 1.1, which reads 1e-4 as a string.
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or not test(number):
        unset = " (or null to unset)" if optional else ""
        raise ConfigError(f"{key}={value!r} must be a number {allowed}{unset}")
    return number


def _checked_names(key, value, allowed=None):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}={value!r} must be a non-empty list of module names, e.g. [to_q, to_v]")
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key} entry {name!r} must be a non-empty module name")
        if allowed is not None and name not in allowed:
            raise ConfigError(f"{key} entry {name!r} is not allowed; choose from: {', '.join(allowed)}")
    return tuple(dict.fromkeys(value))


def _check_text(key, value, optional=False, max_length=None):
    if optional and value is None:
        return
    if not isinstance(value, str) or not value.strip():
        unset = " (or null to unset)" if optional else ""
        quote = "; put numbers in quotes" if isinstance(value, (int, float)) else ""
        raise ConfigError(f"{key}={value!r} must be a non-empty text{unset}{quote}")
    if max_length is not None and len(value) > max_length:
        raise ConfigError(f"{key} is {len(value)} characters long; at most {max_length} are allowed")


def _checked_date(key, value):
    if value is None:
        return None
    if type(value) is datetime.date:  # YAML reads an unquoted 2026-12-31 as a date
        return value.isoformat()
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        try:
            return datetime.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ConfigError(f"{key}={value!r} must be a date written YYYY-MM-DD (or null to unset)")


CONFIG_SECTIONS = ("model_config", "data_config", "train_config", "output_config")
# Path keys resolved against the working directory, and the value that is a word, not a path.
PATH_KEYS = {
    "base_model": "embedded",
    "train_data_dir": None,
    "metadata_path": None,
    "output_dir": None,
    "resume_from_checkpoint": "latest",
}


def load_config(path, overrides=()):
    """Read a training YAML file, apply ``--set`` overrides and validate.

    Any :class:`TrainConfig` key may sit at the top level (flat shape) or in one of the
    sections ``model_config``, ``data_config``, ``train_config``, ``output_config`` (nested
    shape, as in the seed project); a key may be set only once. Relative paths (``base_model``
    unless ``embedded``, ``train_data_dir``, ``metadata_path``, ``output_dir``,
    ``resume_from_checkpoint`` unless ``latest``) are resolved against the current working
    directory, not the file's folder, because the seed's files are written to be run from the
    project root.

    Args:
        path (`str` or `os.PathLike`): The YAML file.
        overrides (`Iterable[str]`): ``key=value`` strings, the value parsed as YAML
            (``lora_rank=4``, ``target_modules=[to_q,to_v]``, ``snr_gamma=null``); they win over
            the file. ``train_config.lora_rank=4`` is accepted too.

    Returns:
        `TrainConfig`: The validated configuration.

    Raises:
        `ConfigError`: The file cannot be read or parsed (naming the line), a key is unknown
            (with a did-you-mean hint) or set twice, an override is malformed, or a value is invalid.
    """
    source = os.fspath(path)
    values = _flatten_sections(_read_yaml(source), source)
    values.update(_parse_overrides(overrides))
    try:
        return TrainConfig.from_dict(_resolve_paths(values))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _read_yaml(source):
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """Safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        with open(source, encoding="utf-8") as stream:
            return yaml.load(stream, Loader=UniqueKeyLoader)  # safe: a SafeLoader subclass
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {source} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {source} is not valid YAML{where}: {problem}") from None


def _flatten_sections(data, source):
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must hold keys such as 'base_model:' or 'train_config:', "
                          f"not a {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    flat, origin = {}, {}
    for key, value in data.items():
        if key in CONFIG_SECTIONS:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must hold keys such as 'lora_rank: 8', not {value!r}")
            items, where = (value or {}).items(), key
            _reject_unknown(value or {}, known, f" in {key} of {source}")
        else:
            _reject_unknown([key], known | set(CONFIG_SECTIONS), f" at the top level of {source}")
            items, where = [(key, value)], "the top level"
        for name, item in items:
            if name in origin:
                raise ConfigError(f"{source}: key {name!r} is set in both {origin[name]} and {where}; keep one")
            flat[name], origin[name] = item, where
    return flat


def _parse_overrides(overrides):
    import yaml

    if isinstance(overrides, str):
        overrides = [overrides]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    parsed = {}
    for override in overrides:
        key, sep, text = str(override).partition("=")
        key = key.strip()
        section, dot, field_name = key.partition(".")
        if dot and section in CONFIG_SECTIONS:
            key = field_name
        if not sep or not key:
            raise ConfigError(f"override {override!r} must be written key=value, e.g. lora_rank=4")
        _reject_unknown([key], known, " in --set")
        try:
            parsed[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: the value is not valid YAML; quote it") from None
    return parsed


def _resolve_paths(values):
    resolved = dict(values)
    for key, word in PATH_KEYS.items():
        value = resolved.get(key)
        if isinstance(value, str) and value.strip() and value != word:
            resolved[key] = os.path.abspath(os.path.expanduser(value))
    return resolved
