"""Throughput of ``prepare`` against a plain DICOM -> PNG loop, in the same process.

The baseline is what a script without any privacy work does: read with pydicom, decode
``pixel_array``, min-max scale to 8 bits, save a PNG with Pillow. ``prepare`` additionally
scans headers for batch checks, harvests identifiers for the caption screen, de-identifies,
windows, resizes, captions, and writes the de-identified DICOM and the index files.
Prints files per second of each and the ratio (target: prepare >= 0.7x the baseline).

Usage: python bench/ingest.py [--files N] [--size PIXELS] [--repeats R]
"""

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from PIL import Image  # noqa: E402

from lib_lora_train.config import IngestConfig  # noqa: E402
from lib_lora_train.dataset.images import PNG_COMPRESS_LEVEL  # noqa: E402
from lib_lora_train.dataset.prepare import prepare_dataset  # noqa: E402
from lib_lora_train.dicom.burned_in import is_ocr_available  # noqa: E402
from lib_lora_train.dicom.phantom import write_phantom_series  # noqa: E402
from lib_lora_train.dicom.pseudonym import Pseudonymizer  # noqa: E402


def baseline(paths, output, **png_options):
    """Plain conversion: no de-identification, no checks."""
    output.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(paths):
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
        scaled = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0) * 255.0
        Image.fromarray(scaled.astype(np.uint8)).save(output / f"{number}.png", **png_options)


def ours(paths, output, ocr):
    config = IngestConfig(window="lung", ocr=ocr)
    result = prepare_dataset(paths, output, config, Pseudonymizer(b"b" * 32), overwrite=True)
    if len(result.images) != len(paths):
        raise RuntimeError(f"prepare accepted {len(result.images)} of {len(paths)} benchmark files")


def timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        patients = max(1, args.files // 10)
        paths = write_phantom_series(tmp / "in", n_patients=patients, slices_per_patient=args.files // patients,
                                     size=args.size)
        runs = {"baseline (pydicom -> PNG)": lambda: baseline(paths, tmp / "base")}
        # The same loop with prepare's PNG compression level isolates the cost of the privacy work.
        runs["baseline, PNG level 4"] = lambda: baseline(paths, tmp / "base4", compress_level=PNG_COMPRESS_LEVEL)
        runs["prepare, OCR off"] = lambda: ours(paths, tmp / "ours", "off")
        if is_ocr_available():
            runs["prepare, OCR on"] = lambda: ours(paths, tmp / "ours_ocr", "auto")
        results = {name: len(paths) / timed(run, args.repeats) for name, run in runs.items()}
    reference = results["baseline (pydicom -> PNG)"]
    print(f"{len(paths)} phantom CT files, {args.size}x{args.size}, median of {args.repeats} runs")
    for name, rate in results.items():
        print(f"  {name:<28} {rate:8.1f} files/s   ratio {rate / reference:5.2f}x")
    print("target: prepare (OCR off) >= 0.70x the baseline; the level-4 row shows the privacy work's own cost")


if __name__ == "__main__":
    main()
