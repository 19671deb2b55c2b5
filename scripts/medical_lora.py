"""WebUI glue: register medical-lora's settings and mount its API. Logic lives in ``lib_lora_train``."""

import sys
import types

import gradio as gr
from modules import cache, call_queue, processing, script_callbacks, shared

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


def _on_app_started(demo, app):
    from modules import scripts

    from lib_lora_train.webui.app import mount_api, start_maintenance
    from lib_lora_train.webui.lora_bridge import find_addnet

    webui = types.SimpleNamespace(shared=shared, call_queue=call_queue, processing=processing, cache=cache,
                                  networks=sys.modules.get("networks"), addnet=find_addnet(scripts))
    start_maintenance(mount_api(app, webui))


script_callbacks.on_app_started(_on_app_started)
