"""Stand-in for WebUI 1.10.1 ``modules/scripts.py``: ``scripts_data``, a list of
``ScriptClassData(script_class, path, basedir, module)`` (empty: no Additional Networks)."""

scripts_data = []
