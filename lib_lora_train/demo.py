"""``demo``: the pipeline end to end on generated phantoms, with a privacy self-check.

Until the training issue lands this runs the ingest part: it generates phantom CT series
whose headers carry invented personal data in more than 30 attributes, prepares a training
set from them, and then searches every output byte for every planted value, so the user
sees for themselves that none got through.
"""

import pathlib
import shutil

from .config import IngestConfig
from .dicom.phantom import PhantomPatient, planted_values, write_phantom_series
from .dicom.pseudonym import Pseudonymizer, load_or_create_site_key


def run_demo(home, patients=3, slices=6):
    """Run the demo inside ``home``; print what happened; return the exit status."""
    from .commands import format_report, progress_bar
    from .dataset.prepare import prepare_dataset

    demo_dir = home.root / "demo"
    inputs = demo_dir / "phantom_dicoms"
    shutil.rmtree(inputs, ignore_errors=True)
    write_phantom_series(inputs, n_patients=patients, slices_per_patient=slices)
    config = IngestConfig(window="lung", trigger_word="", style_phrase="medical_art style")
    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    with progress_bar("de-identifying") as progress:
        result = prepare_dataset([inputs], demo_dir / "dataset", config, pseudonymizer, overwrite=True,
                                 progress=progress)
    planted = sorted({v for i in range(patients) for v in planted_values(PhantomPatient(i))})
    leaks = find_planted_values(result.output_dir, planted)
    print(f"generated {patients * slices} phantom CT slices of {patients} invented patients in {inputs}")
    print(f"  each carries {len(planted_values(PhantomPatient(0)))} planted identifiers "
          "(names, IDs, dates, UIDs, institution, nested sequences, a private block, an overlay)")
    print(format_report(result.report, result.output_dir))
    if result.images:
        print(f"  example caption: {result.images[0].caption}")
    print(f"  metadata: {result.output_dir / 'metadata.csv'}")
    print(f"  privacy self-check: {len(leaks)} of {len(planted)} planted values found in "
          f"{sum(1 for p in result.output_dir.rglob('*') if p.is_file())} output files")
    for value, path in leaks:
        print(f"    LEAK: a planted value was found in {path}")
    print("next: training on this set arrives with the training issue (python -m lib_lora_train train)")
    return 0 if result.ok and not leaks else 1


def find_planted_values(folder, values):
    """Return ``(value, path)`` for every planted value found in any file under ``folder``.

    Compared case-insensitively on the raw bytes, in UTF-8 and in the UTF-16 some DICOM
    character sets use, so a value cannot hide in an encoding.
    """
    needles = [(v, [v.lower().encode("utf-8"), v.lower().encode("utf-16-le")]) for v in values if len(v) >= 4]
    found = []
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes().lower()
        found += [(value, path) for value, forms in needles if any(form in data for form in forms)]
    return found
