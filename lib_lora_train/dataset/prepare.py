"""``prepare``: DICOM inputs -> de-identified, windowed, captioned training set.

Output folder layout (Hugging Face ``imagefolder`` compatible)::

    images/<pseudonym>.png   8-bit, square, pixels only
    dicom/<pseudonym>.dcm    one de-identified DICOM per accepted file (for re-rendering)
    metadata.csv             file_name,text
    manifest.json            pseudonymous patient/study ids, options, per-file outcome, hashes
    report.json              what was accepted and rejected, and why; warnings

Everything is built in a hidden staging folder inside the output folder and moved into
place at the end, so a crash never leaves a half-written dataset, and nothing is written
outside the output folder. One bad input never stops the batch: it gets a per-file
outcome with a reason that names it by position, never by path or header value.
"""

import collections
import csv
import dataclasses
import datetime
import io
import logging
import os
import pathlib
import secrets
import shutil

from ..config import IngestConfig
from ..errors import InputError
from ..fileio import write_json_atomic, write_text_atomic
from ..dicom.read import pydicom_silenced
from .inputs import expand_inputs
from .outcomes import FileOutcome, build_manifest, build_report
from .pipeline import FilePipeline, scan_header

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
SCREEN_FILE = "phi_screen.json"
DATASET_ITEMS = ("images", "dicom", "metadata.csv", "manifest.json", "report.json", SCREEN_FILE)


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` produced.

    Attributes:
        dataset_id (`str`): id of the new dataset.
        output_dir (`pathlib.Path`): where it lives.
        outcomes (`list[FileOutcome]`): one per input file, in input order.
        images (`list[ImageRecord]`): one per training image.
        report (`dict`): the content of ``report.json``.
        manifest (`dict`): the content of ``manifest.json``.
    """

    dataset_id: str
    output_dir: pathlib.Path
    outcomes: list
    images: list
    report: dict
    manifest: dict

    @property
    def ok(self):
        """True when at least one training image was prepared."""
        return bool(self.images)


def new_dataset_id():
    """A fresh dataset id: date plus random hex, no link to any input."""
    return f"ds-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d}-{secrets.token_hex(4)}"


def prepare_dataset(inputs, output_dir, config, pseudonymizer, *, overwrite=False, captions=True,
                    detector=None, progress=None, dataset_id=None):
    """Ingest ``inputs`` into a training set in ``output_dir``.

    Args:
        inputs (`list[str | os.PathLike]`): files, folders or .zip archives.
        output_dir (`str | os.PathLike`): the dataset folder (created if missing).
        config (`IngestConfig`): validated options.
        pseudonymizer (`Pseudonymizer`): keyed pseudonyms of this site.
        overwrite (`bool`): replace a dataset already in ``output_dir``.
        captions (`bool`): write captions and ``metadata.csv`` (False for ``dicom2png``).
        detector (`TextDetector`, *optional*): OCR engine to reuse across calls.
        progress (`Callable[[int, int], None]`, *optional*): called with (done, total).
        dataset_id (`str`, *optional*): id to use instead of a fresh one.

    Returns:
        `PrepareResult`

    Raises:
        InputError: the output folder already holds a dataset and ``overwrite`` is False.
    """
    if not isinstance(config, IngestConfig):
        raise TypeError("config must be an IngestConfig")
    output_dir = _checked_output_dir(output_dir, overwrite)
    dataset_id = dataset_id or new_dataset_id()
    staging = output_dir / f"{STAGING_PREFIX}{secrets.token_hex(4)}"
    (staging / "images").mkdir(parents=True)
    if config.keep_deid_dicom and captions:
        (staging / "dicom").mkdir()
    try:
        with pydicom_silenced():
            outcomes, images, identifiers = _ingest_all(inputs, staging, config, pseudonymizer, captions, detector,
                                                        progress)
        if captions:
            _write_caption_screen(staging, identifiers, pseudonymizer)
        manifest = build_manifest(dataset_id, config, outcomes, images, captions)
        report = build_report(dataset_id, config, outcomes, images)
        _write_index_files(staging, images, manifest, report, captions)
        _publish(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("dataset %s: %d images from %d of %d inputs", dataset_id, len(images),
                sum(o.status == "accepted" for o in outcomes), len(outcomes))
    return PrepareResult(dataset_id, output_dir, outcomes, images, report, manifest)


def _checked_output_dir(output_dir, overwrite):
    output_dir = pathlib.Path(output_dir).resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"the output {output_dir} exists and is not a folder", code="bad_output")
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in output_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run that crashed
    existing = [name for name in DATASET_ITEMS if (output_dir / name).exists()]
    if existing and not overwrite:
        raise InputError(
            f"the output folder {output_dir} already holds a dataset ({', '.join(existing)}); "
            "choose a new folder or pass --overwrite",
            code="output_exists",
        )
    return output_dir


def _ingest_all(inputs, staging, config, pseudonymizer, captions, detector, progress):
    sources = expand_inputs(inputs, config.max_file_bytes, config.max_zip_ratio, config.max_zip_bytes)
    scans = [scan_header(source) for source in sources]
    batch_modality = _majority_modality(scans)
    pipeline = FilePipeline(staging, config, pseudonymizer, captions=captions, detector=detector)
    outcomes, images, seen_hashes, seen_uids = [], [], {}, {}
    for done, (source, scan) in enumerate(zip(sources, scans), start=1):
        outcome = _duplicate_or_mixed(scan, batch_modality, seen_hashes, seen_uids)
        if outcome is None:
            outcome, new_images = pipeline.process(source, scan)
            images.extend(new_images)
        outcomes.append(outcome)
        logger.info("%s: %s%s", outcome.label, outcome.status, f" ({outcome.code})" if outcome.code else "")
        if progress is not None:
            progress(done, len(sources))
    return outcomes, images, pipeline.identifiers


def _majority_modality(scans):
    counts = collections.Counter(s.modality for s in scans if s.error is None and s.modality)
    return counts.most_common(1)[0][0] if counts else None


def _duplicate_or_mixed(scan, batch_modality, seen_hashes, seen_uids):
    """Outcome for a file rejected on batch grounds (error, duplicate, mixed modality)."""
    if scan.error is not None:
        return FileOutcome.rejected(scan.label, scan.sha256, scan.error)
    if scan.sha256 in seen_hashes:
        return FileOutcome.rejected(scan.label, scan.sha256, InputError(
            f"{scan.label}: duplicate of {seen_hashes[scan.sha256]} (identical content); skipped", code="duplicate"))
    seen_hashes[scan.sha256] = scan.label
    if scan.instance_key and scan.instance_key in seen_uids:
        return FileOutcome.rejected(scan.label, scan.sha256, InputError(
            f"{scan.label}: same image (SOP Instance) as {seen_uids[scan.instance_key]}; skipped", code="duplicate"))
    if scan.instance_key:
        seen_uids[scan.instance_key] = scan.label
    if batch_modality and scan.modality != batch_modality:
        return FileOutcome.rejected(scan.label, scan.sha256, InputError(
            f"{scan.label}: modality {scan.modality or 'unknown'} differs from the batch's {batch_modality}; "
            "prepare one modality per training set", code="mixed_modality"))
    return None


def _write_caption_screen(staging, identifiers, pseudonymizer):
    """Keep what later caption edits are screened against, as keyed hashes only.

    The original headers are gone after ingest; ``phi_screen.json`` holds HMAC digests of the
    accepted files' identifying values (names, IDs, dates in many formats, ...), never the
    values, so an edited caption can still be refused for naming any of these patients.
    """
    from ..dicom.identifiers import IdentifierIndex
    from .phi_hashes import hash_index

    hashed = hash_index(identifiers or IdentifierIndex(), pseudonymizer.site_key)
    write_text_atomic(staging / SCREEN_FILE, hashed.to_json())


def metadata_csv(rows):
    """The text of ``metadata.csv`` (Hugging Face ``imagefolder``) for ``[file_name, caption]`` rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file_name", "text"])
    writer.writerows(rows)
    return buffer.getvalue()


def _write_index_files(staging, images, manifest, report, captions):
    if captions:
        write_text_atomic(staging / "metadata.csv", metadata_csv([image.file_name, image.caption] for image in images))
    write_json_atomic(staging / "manifest.json", manifest)
    write_json_atomic(staging / "report.json", report)


def _publish(staging, output_dir):
    """Make the staged dataset durable, then move it into the output folder, replacing old items.

    Staged files are written plainly (nobody sees them before this point); one ``os.sync``
    here makes them durable before they become visible, instead of an fsync per file.
    """
    os.sync()
    for name in DATASET_ITEMS:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in DATASET_ITEMS:
        if (staging / name).exists():
            (staging / name).replace(output_dir / name)
