"""Pure tests of the VOI windowing functions and presets (no DICOM files)."""

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing

from lib_lora_train.dicom.window import (
    WINDOW_PRESETS,
    Window,
    apply_window,
    auto_window,
    invert,
    preset_window,
)

# Radiopaedia "Windowing (CT)" lower..upper HU bounds (DICOM_NOTES 4.2); soft_tissue is
# OHIF's W 400 / L 40.
EXPECTED_BOUNDS = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-125.0, 225.0),
    "bone": (-500.0, 1300.0),
    "brain": (0.0, 80.0),
    "abdomen": (-150.0, 250.0),
    "liver": (-45.0, 105.0),
    "soft_tissue": (-160.0, 240.0),
}


def _bounds(center, width):
    return center - width / 2.0, center + width / 2.0


def test_every_preset_has_expected_bounds():
    assert set(WINDOW_PRESETS) == set(EXPECTED_BOUNDS)


@pytest.mark.parametrize("name", sorted(EXPECTED_BOUNDS))
def test_preset_bounds_match_radiopaedia(name):
    window = preset_window(name)
    assert (window.name, window.function) == (name, "LINEAR_EXACT")
    assert _bounds(window.center, window.width) == EXPECTED_BOUNDS[name]


@pytest.mark.parametrize(
    "name, buggy",
    [
        ("liver", (150.0, 30.0)),  # width and level swapped
        ("lung", (600.0, 1500.0)),  # sign of the level lost
        ("bone", (40.0, 80.0)),  # labels swapped with brain
    ],
)
def test_bounds_check_catches_common_preset_bugs(name, buggy):
    assert _bounds(*buggy) != EXPECTED_BOUNDS[name]


def test_lung_preset_maps_bounds_and_centre_exactly():
    hu = np.array([-2000.0, -1350.0, -975.0, -600.0, -225.0, 150.0, 1000.0])
    grey = apply_window(hu, preset_window("lung"))
    assert grey.dtype == np.uint8
    assert grey.tolist() == [0, 0, 64, 128, 191, 255, 255]


def test_brain_window_separates_grey_and_white_matter():
    grey = apply_window(np.array([25.0, 40.0]), preset_window("brain"))
    assert grey[1] - grey[0] > 40


@pytest.mark.parametrize(
    "function, expected",
    [
        # c=40, w=80: LINEAR saturates at c-0.5+(w-1)/2 = 79, LINEAR_EXACT at c+w/2 = 80.
        ("LINEAR", {0.0: 0, 1.0: 3, 40.0: 129, 79.0: 255, 80.0: 255}),
        ("LINEAR_EXACT", {0.0: 0, 1.0: 3, 40.0: 128, 79.0: 252, 80.0: 255}),
        # SIGMOID never reaches the output limits at the window bounds.
        ("SIGMOID", {0.0: 30, 40.0: 128, 80.0: 225}),
    ],
)
def test_voi_lut_functions_at_boundaries(function, expected):
    window = Window(name="file", center=40.0, width=80.0, function=function)
    values = np.array(list(expected))
    assert apply_window(values, window).tolist() == list(expected.values())


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_agree_with_pydicom(function):
    # pydicom's apply_windowing outputs the input bit range: 0..255 for 8-bit unsigned.
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.PixelRepresentation = 8, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 100, 51, function
    ramp = np.arange(256, dtype=np.uint8)
    reference = np.asarray(apply_windowing(ramp, ds), dtype=np.float64)
    ours = apply_window(ramp, Window(name="file", center=100.0, width=51.0, function=function))
    assert np.abs(ours.astype(np.float64) - reference).max() <= 1.0


def test_linear_with_width_one_is_a_threshold():
    grey = apply_window(np.array([9.0, 9.6, 10.0, 11.0]), Window("file", 10.0, 1.0, "LINEAR"))
    assert grey.tolist() == [0, 255, 255, 255]


def test_window_rejects_bad_width_and_function():
    with pytest.raises(ValueError, match="width"):
        Window(name="file", center=0.0, width=0.0)
    with pytest.raises(ValueError, match="VOI LUT function"):
        Window(name="file", center=0.0, width=10.0, function="LOG")


def test_unknown_preset_raises_key_error():
    with pytest.raises(KeyError):
        preset_window("lungs")


def test_auto_window_mask_excludes_padding():
    rng = np.random.default_rng(0)
    body = rng.uniform(-1000.0, 1000.0, size=(64, 64))
    values = body.copy()
    values[:, :16] = -3024.0  # padding outside the field of view
    mask = np.ones(values.shape, dtype=bool)
    mask[:, :16] = False
    unmasked = auto_window(values)
    masked = auto_window(values, mask=mask)
    assert _bounds(unmasked.center, unmasked.width)[0] == pytest.approx(-3024.0)
    low, high = _bounds(masked.center, masked.width)
    assert -1000.0 <= low < -950.0 and 950.0 < high <= 1000.0
    assert (masked.name, masked.function) == ("auto", "LINEAR_EXACT")


def test_auto_window_on_constant_or_empty_data_is_valid():
    assert auto_window(np.full((4, 4), 7.0)).width >= 1.0
    assert auto_window(np.zeros((2, 2)), mask=np.zeros((2, 2), dtype=bool)).width > 0


def test_invert():
    assert invert(np.array([0, 1, 254, 255], dtype=np.uint8)).tolist() == [255, 254, 1, 0]
