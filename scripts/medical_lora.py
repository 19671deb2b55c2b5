"""WebUI glue: settings, the tab and the API. Logic lives in ``lib_lora_train``."""

import sys
import types

import gradio as gr
from modules import cache, call_queue, processing, progress, script_callbacks, shared

from lib_lora_train.settings import HOST_SETTINGS, SETTINGS_SECTION
from lib_lora_train.webui.extension import WebUIExtension


def _option(setting):
    if setting.choices:
        return shared.OptionInfo(setting.default, setting.label, gr.Dropdown, {"choices": list(setting.choices)})
    return shared.OptionInfo(setting.default, setting.label)


# Registered at import time, as the built-in Lora extension does, so the options exist
# even with --nowebui (where on_ui_settings never runs).
shared.options_templates.update(
    shared.options_section(SETTINGS_SECTION + ("training",), {s.key: _option(s) for s in HOST_SETTINGS})
)


def _webui_modules():
    from modules import scripts

    from lib_lora_train.webui.lora_bridge import find_addnet

    return types.SimpleNamespace(shared=shared, call_queue=call_queue, processing=processing, cache=cache,
                                 progress=progress, networks=sys.modules.get("networks"),
                                 addnet=find_addnet(scripts))


extension = WebUIExtension(_webui_modules)
script_callbacks.on_ui_tabs(extension.ui_tabs)
script_callbacks.on_app_started(extension.app_started)
