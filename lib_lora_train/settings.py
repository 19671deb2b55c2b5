"""Settings a host (the WebUI's Settings tab) exposes, and how they become configs.

The host shows :data:`HOST_SETTINGS` in its own settings UI and hands back a mapping of
the values it stores; everything else (validation, defaults, where data lives) is decided
here, so the WebUI glue stays a few lines of registration.
"""

import dataclasses

from .config import CAPTION_FIELDS, DEFAULT_CAPTION_TEMPLATE, IngestConfig
from .dicom.window import WINDOW_MODES, WINDOW_PRESETS
from .home import HOME_ENV_VAR, resolve_home

SETTINGS_SECTION = ("medical_lora", "Medical LoRA (DICOM)")


@dataclasses.dataclass(frozen=True)
class HostSetting:
    """One setting: its key in the host's store, default, label and allowed choices."""

    key: str
    default: object
    label: str
    choices: tuple = ()


HOST_SETTINGS = (
    HostSetting("medical_lora_home", "",
                f"Data home folder (empty: ${HOME_ENV_VAR}, else ~/.medical-lora); nothing is written elsewhere"),
    HostSetting("medical_lora_window", "file", "Default window for DICOM conversion",
                WINDOW_MODES + tuple(WINDOW_PRESETS)),
    HostSetting("medical_lora_caption_template", DEFAULT_CAPTION_TEMPLATE,
                "Caption template; placeholders: " + ", ".join("{" + f + "}" for f in CAPTION_FIELDS)),
    HostSetting("medical_lora_train_users", "",
                "Users allowed to train (comma-separated signed-in names; empty: every signed-in user)"),
    HostSetting("medical_lora_delete_users", "",
                "Users allowed to delete adapters and forget patients (comma-separated; empty: every signed-in user)"),
    HostSetting("medical_lora_expiry_days", 365,
                "Default lifetime of a new adapter in days (the tab's expiry date; GDPR storage limitation)"),
    HostSetting("medical_lora_unused_days", 365,
                "Erase adapters unused in generations for this many days (checked at every start)"),
    HostSetting("medical_lora_keep_datasets", True,
                "Keep prepared datasets after training (off: erased once the adapter is registered; the registry "
                "keeps the pseudonymous lineage, so forget-patient still works)"),
    HostSetting("medical_lora_api_local_without_auth", False,
                "Allow the /medical-lora/v1 API without --api-auth credentials, from this machine only"),
)


def _value(options, setting):
    value = options.get(setting.key, setting.default)
    return setting.default if value is None else value


def home_from_options(options, environ=None):
    """The data home chosen in the host's settings (see :func:`resolve_home`)."""
    return resolve_home(_value(options, HOST_SETTINGS[0]) or None, environ)


def ingest_config_from_options(options, **overrides):
    """An :class:`IngestConfig` from the host's settings plus per-job overrides (validated)."""
    values = {
        "window": _value(options, HOST_SETTINGS[1]),
        "caption_template": _value(options, HOST_SETTINGS[2]),
    }
    values.update(overrides)
    return IngestConfig.from_dict(values)


def _setting(key):
    return next(setting for setting in HOST_SETTINGS if setting.key == key)


def user_list(options, key):
    """A comma-separated user list setting as a tuple of names."""
    return tuple(name.strip() for name in str(_value(options, _setting(key)) or "").split(",") if name.strip())


def days_setting(options, key):
    """A whole number of days from a setting, at least 1 (a bad value falls back to the default)."""
    setting = _setting(key)
    try:
        days = int(_value(options, setting))
    except (TypeError, ValueError):
        return setting.default
    return days if days >= 1 else setting.default


def keep_datasets(options):
    """Whether prepared datasets stay after their adapter is registered."""
    return bool(_value(options, _setting("medical_lora_keep_datasets")))


def api_local_without_auth(options):
    """Whether the API may answer unauthenticated requests from the local machine."""
    return bool(_value(options, _setting("medical_lora_api_local_without_auth")))
