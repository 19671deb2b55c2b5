"""VOI windowing: pure array-to-array functions, no DICOM objects.

The presets are conventions, not standards (Radiopaedia, "Windowing (CT)"; OHIF's
``windowLevelPresets`` agrees except where noted). Each is stored as (centre, width) in
Hounsfield units and is therefore only meaningful for CT.
"""

import dataclasses

# name -> (centre/level L, width W) in HU. Radiopaedia values; "soft_tissue" is OHIF's
# "Soft tissue" (W 400 / L 40). lower..upper = L - W/2 .. L + W/2.
WINDOW_PRESETS = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "soft_tissue": (40.0, 400.0),
}

# Window choices that are not presets: the file's own (0028,1050)/(0028,1051), else auto;
# or percentiles of the (non-padding) values.
WINDOW_MODES = ("file", "auto")

VOI_LUT_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclasses.dataclass(frozen=True)
class Window:
    """A VOI window actually applied to an image.

    Attributes:
        name (`str`): preset name, ``"file"`` or ``"auto"``.
        center (`float`): window centre (level), in the units of the input values.
        width (`float`): window width, > 0.
        function (`str`): one of :data:`VOI_LUT_FUNCTIONS`.
    """

    name: str
    center: float
    width: float
    function: str = "LINEAR_EXACT"

    def __post_init__(self):
        if not self.width > 0:
            raise ValueError(f"window width must be > 0, got {self.width}")
        if self.function not in VOI_LUT_FUNCTIONS:
            raise ValueError(
                f"VOI LUT function {self.function!r} is not supported; use one of {VOI_LUT_FUNCTIONS}"
            )


def preset_window(name):
    """Return the :class:`Window` of a named preset.

    Raises:
        KeyError: the name is not in :data:`WINDOW_PRESETS`.
    """
    center, width = WINDOW_PRESETS[name]
    return Window(name=name, center=center, width=width)


def apply_window(values, window):
    """Map values through a VOI window to 8-bit grey levels.

    Implements the three VOI LUT functions of DICOM PS3.3 C.11.2.1.2 with an output range
    of 0..255. ``LINEAR`` keeps the standard's half-unit offsets (so it matches what a
    viewer shows for integer data); ``LINEAR_EXACT`` is the plain ``L +/- W/2`` ramp.

    Args:
        values (`np.ndarray`): real-valued image (e.g. Hounsfield units), any shape.
        window (`Window`): the window to apply.

    Returns:
        `np.ndarray`: ``uint8`` array of the same shape.
    """
    import numpy as np  # lazily: config imports this module for the preset names only

    x = np.asarray(values, dtype=np.float64)
    c, w = float(window.center), float(window.width)
    if window.function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR" and w >= 1:
        y = (x - (c - 0.5)) / (w - 1.0) + 0.5 if w > 1 else (x > c - 0.5).astype(np.float64)
    else:
        y = (x - c) / w + 0.5
    return np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def auto_window(values, mask=None, low_percentile=0.5, high_percentile=99.5):
    """Choose a window that spans the bulk of the values.

    Padding (outside the field of view) must be excluded through ``mask``: a CT padded
    with -3024 HU would otherwise spend most of the grey range on air that is not there.

    Args:
        values (`np.ndarray`): real-valued image.
        mask (`np.ndarray`, *optional*): boolean array, True where a value is real data.
        low_percentile (`float`): lower bound percentile.
        high_percentile (`float`): upper bound percentile.

    Returns:
        `Window`: named ``"auto"``, ``LINEAR_EXACT``.
    """
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if mask is not None:
        data = data[np.asarray(mask, dtype=bool)]
    data = data[np.isfinite(data)]
    if data.size == 0:
        return Window(name="auto", center=0.0, width=1.0)
    lo, hi = np.percentile(data, [low_percentile, high_percentile])
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    width = max(float(hi - lo), 1.0)
    return Window(name="auto", center=float(lo) + width / 2.0, width=width)


def invert(grey):
    """Invert 8-bit grey levels (MONOCHROME1 or an INVERSE presentation LUT)."""
    import numpy as np

    return (255 - np.asarray(grey, dtype=np.uint8)).astype(np.uint8)
