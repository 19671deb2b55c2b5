"""Stand-in for WebUI 1.10.1 ``modules/scripts.py``: ``scripts_data`` (a list of
``ScriptClassData(script_class, path, basedir, module)``; empty: no Additional Networks),
``AlwaysVisible`` and the ``Script`` base class with the hooks our scripts override."""

scripts_data = []
AlwaysVisible = object()


class Script:
    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        return []

    def process_batch(self, p, *args, **kwargs):
        pass
