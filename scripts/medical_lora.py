"""WebUI glue: register medical-lora's settings. Logic lives in ``lib_lora_train``."""

import gradio as gr
from modules import shared

from lib_lora_train.settings import HOST_SETTINGS, SETTINGS_SECTION


def _option(setting):
    if setting.choices:
        return shared.OptionInfo(setting.default, setting.label, gr.Dropdown, {"choices": list(setting.choices)})
    return shared.OptionInfo(setting.default, setting.label)


# Registered at import time, as the built-in Lora extension does, so the options exist
# even with --nowebui (where on_ui_settings never runs).
shared.options_templates.update(
    shared.options_section(SETTINGS_SECTION + ("training",), {s.key: _option(s) for s in HOST_SETTINGS})
)
