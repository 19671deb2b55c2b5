"""Stand-in for WebUI 1.10.1 ``modules/shared.py``: options_templates, options_section, OptionInfo, opts,
cmd_opts, config_filename, walk_files, sd_model, loaded_hypernetworks.

Mirrors ``modules/options.py``: ``OptionInfo(default, label, component, component_args, ...,
section, category_id)`` and ``options_section(section_identifier, options_dict)``, which sets
``section`` (and ``category_id`` for a 3-tuple) on each option and returns the dict;
``Options.__getattr__`` reads a stored value, else the registered default.
"""

import argparse
import json
import os


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.category_id = category_id
        self.refresh = refresh


def options_section(section_identifier, options_dict):
    for value in options_dict.values():
        if len(section_identifier) == 2:
            value.section = section_identifier
        elif len(section_identifier) == 3:
            value.section = section_identifier[0:2]
            value.category_id = section_identifier[2]
    return options_dict


class _Options:
    """``shared.opts``: stored values in ``data``, defaults from the templates (``options.py::Options``)."""

    def __init__(self):
        self.data = {}

    def __getattr__(self, item):
        data = self.__dict__.get("data", {})
        if item in data:
            return data[item]
        if item in options_templates:
            return options_templates[item].default
        raise AttributeError(item)

    def save(self, filename):
        """``options.py::Options.save``: the stored values as JSON (the real one also checks ``--freeze-settings``)."""
        with open(filename, "w", encoding="utf8") as file:
            json.dump(self.data, file, indent=4, ensure_ascii=False)


options_templates = {}
# The built-in options the WebUI host reads (``modules/shared_options.py``), with their defaults.
options_templates.update(options_section(("training", "Training", "training"), {
    "training_xattention_optimizations": OptionInfo(False, "Use cross attention optimizations while training"),
}))
options_templates.update(options_section(("sd", "Stable Diffusion", "sd"), {
    "sd_unet": OptionInfo("Automatic", "SD Unet"),
    "emphasis": OptionInfo("Original", "Emphasis mode"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip"),
}))
options_templates.update(options_section(("optimizations", "Optimizations", "sd"), {
    "cross_attention_optimization": OptionInfo("Automatic", "Cross attention optimization"),
    "fp8_storage": OptionInfo("Disable", "FP8 weight"),
}))
options_templates.update(options_section(("saving-images", "Saving images/grids", "saving"), {
    "samples_format": OptionInfo("png", "File format for images"),
}))
options_templates.update(options_section(("extra_networks", "Extra Networks", "sd"), {
    "list_hidden_files": OptionInfo(True, "Load models/files in hidden directories"),
}))
opts = _Options()

# ``modules/shared_cmd_options.py::cmd_opts`` (argparse) as after ``--use-cpu all --no-half``.
cmd_opts = argparse.Namespace(lowvram=False, medvram=False, medvram_sdxl=False, no_half=True, no_half_vae=True,
                              use_cpu=["all"], upcast_sampling=False, precision="full", disable_nan_check=False,
                              # The Lora extension's ``preload.py`` (``--lora-dir``, ``--lyco-dir-backcompat``, defaults
                              # under ``models/``) and ``shared_cmd_options.py`` (``--no-hashing``,
                              # ``--ui-settings-file``); tests point them at a temporary folder.
                              lora_dir=os.path.join("models", "Lora"), lyco_dir_backcompat=os.path.join("models", "LyCORIS"),
                              no_hashing=False, ui_settings_file="config.json",
                              # ``cmd_args.py``: ``--api-auth`` "user:password[,user2:password2]" (None when unset),
                              # ``--gradio-auth`` (same form) and ``--gradio-auth-path`` (a file of it).
                              api_auth=None, gradio_auth=None, gradio_auth_path=None)
# ``shared.py``: ``config_filename = cmd_opts.ui_settings_file``.
config_filename = cmd_opts.ui_settings_file
# ``shared.loaded_hypernetworks``: the hypernetworks of the last prompt (``hypernetwork.py::load_hypernetworks``).
loaded_hypernetworks = []
# The real one is a property (``shared_items.py::Shared.sd_model``) that loads a checkpoint on first read.
sd_model = None


class State:
    """``shared_state.py::State``: ``begin(job)`` and ``end()`` bracket every generation; the fields
    ``/sdapi/v1/progress`` reads (``job_count``, ``job_no``, ``sampling_step(s)``, ``textinfo``) and the
    flag the Interrupt button sets (``interrupted``)."""

    def __init__(self):
        self.job, self.job_count, self.job_no, self.sampling_step, self.sampling_steps = "", 0, 0, 0, 0
        self.textinfo, self.interrupted, self.jobs_begun, self.jobs_ended = None, False, 0, 0

    def begin(self, job="(unknown)"):
        self.sampling_step, self.job_count, self.job_no, self.textinfo, self.interrupted = 0, -1, 0, None, False
        self.job, self.jobs_begun = job, self.jobs_begun + 1

    def end(self):
        self.job, self.job_count, self.jobs_ended = "", 0, self.jobs_ended + 1

    def interrupt(self):
        self.interrupted = True


state = State()


def walk_files(path, allowed_extensions=None):
    """``util.py::walk_files`` (``shared.walk_files``): files under ``path``, recursively, following links."""
    if not os.path.exists(path):
        return
    allowed = None if allowed_extensions is None else set(allowed_extensions)
    for root, _, files in sorted(os.walk(path, followlinks=True), key=lambda item: item[0]):
        for filename in sorted(files):
            if allowed is not None and os.path.splitext(filename)[1].lower() not in allowed:
                continue
            if not opts.list_hidden_files and ("/." in root or "\\." in root):
                continue
            yield os.path.join(root, filename)
