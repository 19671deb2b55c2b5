"""Stand-in for WebUI 1.10.1 ``modules/script_callbacks.py``: only ``on_app_started``.

The real ``on_app_started(callback)`` appends to ``callback_map['callbacks_app_started']``;
``app_started_callback(demo, app)`` calls each with the Gradio Blocks and the FastAPI app.
"""

callbacks_app_started = []


def on_app_started(callback):
    callbacks_app_started.append(callback)


def app_started_callback(demo, app):
    for callback in callbacks_app_started:
        callback(demo, app)
