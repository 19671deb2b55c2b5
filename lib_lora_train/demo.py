"""``demo``: the whole pipeline on generated phantoms, with a privacy self-check.

Phantom CT series whose headers carry invented personal data in more than 30 attributes
are prepared into a de-identified training set, a LoRA is trained on the embedded tiny
model (no download, CPU), exported in kohya format, applied from that file to generate a
preview with and without it, and every output byte is searched for every planted value.
"""

import pathlib
import shutil

from .config import IngestConfig, load_config
from .dicom.phantom import PhantomPatient, planted_values, write_phantom_series
from .dicom.pseudonym import Pseudonymizer, load_or_create_site_key

DEMO_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
PREVIEW_WEIGHT = 0.7
PREVIEW_SEED = 1234
DEMO_ACTOR = "demo"
DEMO_ADAPTER = "medical_demo_lora"
# The registry record the demo files (GDPR Art. 30 fields); nothing here is personal data.
DEMO_RECORD = ("purpose=demonstration on invented phantom data", "owner=demo user", "department=demo",
               "legal_basis=not applicable (invented data)", "dpia_reference=not applicable (demo)")


def run_demo(home, patients=3, slices=6, max_steps=None):
    """Run the demo inside ``home``; print what happened; return the exit status."""
    from .commands import format_report, progress_bar

    demo_dir = home.root / "demo"
    result = _prepare(home, demo_dir, patients, slices, progress_bar)
    print(f"generated {patients * slices} phantom CT slices of {patients} invented patients")
    print(f"  each carries {len(planted_values(PhantomPatient(0)))} planted identifiers "
          "(names, IDs, dates, UIDs, institution, nested sequences, a private block, an overlay)")
    print(format_report(result.report, result.output_dir))
    if not result.ok:
        return 1
    trainer, exported, record = _train(home, demo_dir, result.output_dir, max_steps)
    previews = _previews(trainer.host, exported, result.images[0].caption, demo_dir / "previews")
    planted = sorted({v for i in range(patients) for v in planted_values(PhantomPatient(i))})
    leaks = find_planted_values(home.root, planted, skip=demo_dir / "phantom_dicoms")
    _print_summary(trainer, exported, previews, result, leaks, planted, home.root)
    print(f"  registry: {record.id} '{record.name}', purpose '{record.purpose}', expires {record.expires_at}; "
          f"see python -m lib_lora_train --home {home.root} registry list; audit log {home.audit_log_path}")
    return 0 if not leaks else 1


def _prepare(home, demo_dir, patients, slices, progress_bar):
    from .workflow import ingest

    inputs = demo_dir / "phantom_dicoms"
    shutil.rmtree(inputs, ignore_errors=True)
    write_phantom_series(inputs, n_patients=patients, slices_per_patient=slices)
    config = IngestConfig(window="lung", resolution=64, style_phrase="medical_art style")
    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    with progress_bar("de-identifying") as progress:
        return ingest(home, [inputs], demo_dir / "dataset", config, pseudonymizer, actor=DEMO_ACTOR,
                      overwrite=True, progress=progress)


def _train(home, demo_dir, dataset_dir, max_steps):
    from .commands import progress_bar
    from .registry import Registry
    from .trainer.api import LoRATrainer
    from .workflow import train_and_register

    with Registry(home) as registry:  # a rerun of the demo replaces its previous adapter
        for record in registry.list(status="active"):
            if record.name == DEMO_ADAPTER:
                registry.delete(record.id, actor=DEMO_ACTOR, reason="demo rerun", delete_training_data=False)
    overrides = [f"train_data_dir={dataset_dir}", f"output_dir={demo_dir / 'adapter' / DEMO_ADAPTER}", *DEMO_RECORD]
    if max_steps:
        overrides.append(f"max_steps={max_steps}")
    trainer = LoRATrainer(load_config(DEMO_CONFIG, overrides), home)
    trainer.prepare_data()
    trainer.build_model()
    with progress_bar("training", training=True) as progress:
        _, exported, record = train_and_register(trainer, actor=DEMO_ACTOR, progress=progress)
    return trainer, exported, record


def _previews(host, exported, prompt, folder):
    """One image without and one with the adapter, loaded back from the exported file."""
    import numpy as np

    from .hosts.base import fingerprint_modules
    from .lora.apply import applied_adapter

    folder.mkdir(parents=True, exist_ok=True)
    before = fingerprint_modules(host.modules_to_fingerprint())
    without = host.generate(prompt, seed=PREVIEW_SEED)
    with applied_adapter(host, exported.path, PREVIEW_WEIGHT):
        with_adapter = host.generate(f"{prompt}", seed=PREVIEW_SEED)
    if fingerprint_modules(host.modules_to_fingerprint()) != before:
        raise RuntimeError("applying the adapter for the preview changed the base model")
    # The adapter's preview is its sidecar (the WebUI shows NAME.preview.png on the Lora card), so
    # erasing the adapter erases it too; the base model's image holds no patient data.
    paths = (folder / "without_adapter.png", exported.path.with_suffix(".preview.png"))
    without.save(paths[0])
    with_adapter.save(paths[1])
    difference = float(np.abs(np.asarray(without, dtype=np.float32) - np.asarray(with_adapter, dtype=np.float32)).mean())
    return paths, difference


def _print_summary(trainer, exported, previews, result, leaks, planted, searched):
    run = trainer.result
    print(f"trained {exported.name} on the embedded tiny model: {run.steps} steps ({run.stopped}), "
          f"loss {run.losses[0]['loss']:.4f} -> {run.final_loss:.4f}")
    print(f"  adapter: {exported.path} ({exported.size_bytes / 1024:.0f} KiB, kohya format, sha256 {exported.sha256[:12]})")
    print(f"  loss log and curve: {exported.path.parent / 'losses.csv'}, {exported.path.parent / 'loss_curve.png'}")
    print(f"  previews for '{result.images[0].caption}': {previews[0][0]} (without), {previews[0][1]} "
          f"(with <lora:{exported.name}:{PREVIEW_WEIGHT}>); mean pixel difference {previews[1]:.1f}")
    print(f"  base model unchanged: fingerprint {run.base_fingerprint[:16]} before and after")
    print(f"  privacy self-check: {len(leaks)} of {len(planted)} planted values found in "
          f"{sum(1 for p in searched.rglob('*') if p.is_file() and 'phantom_dicoms' not in p.parts)} files of the "
          "data home (dataset, adapter, previews, registry, audit log)")
    for _, path in leaks:
        print(f"    LEAK: a planted value was found in {path}")


def find_planted_values(folder, values, skip=None):
    """Return ``(value, path)`` for every planted value found in any file under ``folder``.

    Compared case-insensitively on the raw bytes, in UTF-8 and in the UTF-16 some DICOM
    character sets use, so a value cannot hide in an encoding. ``skip`` excludes the inputs.
    """
    needles = [(v, [v.lower().encode("utf-8"), v.lower().encode("utf-16-le")]) for v in values if len(v) >= 4]
    found = []
    for path in sorted(pathlib.Path(folder).rglob("*")):
        if not path.is_file() or (skip is not None and path.is_relative_to(skip)):
            continue
        data = path.read_bytes().lower()
        found += [(value, path) for value, forms in needles if any(form in data for form in forms)]
    return found
