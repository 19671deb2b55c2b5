"""Stand-in for WebUI 1.10.1 ``modules/shared.py``: options_templates, options_section, OptionInfo, opts.

Mirrors ``modules/options.py``: ``OptionInfo(default, label, component, component_args, ...,
section, category_id)`` and ``options_section(section_identifier, options_dict)``, which sets
``section`` (and ``category_id`` for a 3-tuple) on each option and returns the dict.
"""


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
    """``shared.opts``: stored values in ``data``, defaults from the templates."""

    def __init__(self):
        self.data = {}


options_templates = {}
opts = _Options()
