"""Stand-in for WebUI 1.10.1 ``modules/script_callbacks.py``: ``on_app_started`` and ``on_ui_tabs``.

The real ``on_app_started(callback)`` appends to ``callback_map['callbacks_app_started']``;
``app_started_callback(demo, app)`` calls each with the Gradio Blocks and the FastAPI app.
``on_ui_tabs(callback)`` registers a function returning ``[(blocks, title, elem_id)]``;
``ui_tabs_callback()`` concatenates what every callback returns (``c.callback() or []``).
"""

callbacks_app_started = []
callbacks_ui_tabs = []


def on_app_started(callback):
    callbacks_app_started.append(callback)


def app_started_callback(demo, app):
    for callback in callbacks_app_started:
        callback(demo, app)


def on_ui_tabs(callback, *, name=None):
    callbacks_ui_tabs.append(callback)


def ui_tabs_callback():
    tabs = []
    for callback in callbacks_ui_tabs:
        tabs += callback() or []
    return tabs
