"""Tab steps 1 and 2: turn uploaded DICOMs into a reviewed, captioned training set.

Gradio stores each upload in its temporary folder under the client's file name, which may
carry a patient's name. :func:`take_uploads` therefore moves every file at once into a private
folder of the data home under a position (``0001.upload``) and removes Gradio's copy and its
folder. The uploads stay there while the user tries windows, trigger words and style phrases
(each a fresh, deterministic ``prepare`` of the same files into the same dataset id), and are
erased when training starts, when the user discards them, or by the start-up sweep after
:data:`UPLOAD_MAX_AGE_S`.
"""

import csv
import dataclasses
import logging
import os
import pathlib
import re
import secrets
import shutil
import threading
import time

from ..errors import CaptionPHIError, InputError

logger = logging.getLogger(__name__)

UPLOAD_PREFIX = "ui-"
UPLOAD_ID = re.compile(r"ui-[0-9a-f]{16}")
UPLOAD_MAX_AGE_S = 24 * 3600
DATASET_LINK = "dataset.id"  # in an upload folder: the dataset its files were prepared into
# Uploads into one folder are numbered on from what is there; one at a time keeps the numbers unique.
_TAKING = threading.Lock()
THUMBNAIL_SIDE = 160


@dataclasses.dataclass(frozen=True)
class PreparedView:
    """What the tab shows after a prepare: ids, the report and the captioned images.

    Attributes:
        upload_id (`str`): the folder of kept uploads, ``ui-<hex>``.
        dataset_id (`str`): the prepared dataset.
        report (`dict`): ``report.json`` (counts, modalities, rejections by position, warnings).
        rows (`list[list[str]]`): ``[file_name, caption]`` per image, as in ``metadata.csv``.
    """

    upload_id: str
    dataset_id: str
    report: dict
    rows: list

    @property
    def images(self):
        return len(self.rows)


def take_uploads(home, files, upload_id=None):
    """Move Gradio's uploaded files into a private upload folder of the data home.

    Args:
        home (`DataHome`): the data home.
        files (`list`): what a ``gr.File(file_count="multiple")`` gives: paths (gradio 4) or
            temp-file wrappers with ``.name`` (gradio 3).
        upload_id (`str`, *optional*): add to this upload (positions continue); a new one when None.

    Returns:
        `str`: the upload id.

    Raises:
        InputError: no file was uploaded.
    """
    items, paths = _gradio_files(files)
    if not paths:
        raise InputError("no file was uploaded: choose DICOM files, a folder or a .zip first", code="no_input")
    upload_id = upload_id or UPLOAD_PREFIX + secrets.token_hex(8)
    folder = upload_folder(home, upload_id)
    with _TAKING:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        first = len(list(folder.glob("*.upload"))) + 1
        for position, (item, path) in enumerate(zip(items, paths), start=first):
            shutil.move(str(path), folder / f"{position:04d}.upload")
            _remove_empty_parent(path)
            _remove_other_gradio_copies(item, temp_root=path.parent.parent)
    logger.info("%d uploaded file(s) moved into the data home (%s)", len(paths), upload_id)
    return upload_id


def discard_gradio_files(files):
    """Delete Gradio's copies of files that will not be taken (a refused user)."""
    items, paths = _gradio_files(files)
    for item, path in zip(items, paths):
        path.unlink(missing_ok=True)
        _remove_empty_parent(path)
        _remove_other_gradio_copies(item, temp_root=path.parent.parent)


def _gradio_files(files):
    items = [item for item in files or () if item]
    return items, [pathlib.Path(item if isinstance(item, (str, os.PathLike)) else item.name) for item in items]


def sweep_folder(folder):
    """Empty a temporary folder of ours (Gradio's, inside the data home) at start-up."""
    folder = pathlib.Path(folder)
    for child in folder.iterdir() if folder.is_dir() else ():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _remove_empty_parent(path):
    """Gradio keeps each upload in a folder of its own; remove it once it is empty."""
    try:
        path.parent.rmdir()
    except OSError:
        pass


def _remove_other_gradio_copies(item, temp_root):
    """Gradio 3 keeps two more files per upload: the upload route's copy (``orig_name``, under
    the client's file name) and an empty ``NamedTemporaryFile`` whose name it overwrote. Both
    are removed when they lie in the same temporary folder, never anything outside it."""
    candidates = [getattr(item, "orig_name", None), getattr(getattr(item, "file", None), "name", None)]
    close = getattr(item, "close", None)
    if callable(close):
        close()
    root = temp_root.resolve()
    for candidate in candidates:
        if not isinstance(candidate, (str, os.PathLike)):
            continue
        path = pathlib.Path(candidate).resolve()
        if root in path.parents and path.is_file():
            path.unlink()
            if path.parent != root:
                _remove_empty_parent(path)


def upload_folder(home, upload_id):
    """The folder of one upload id (validated, so a crafted id cannot leave the home)."""
    if not isinstance(upload_id, str) or not UPLOAD_ID.fullmatch(upload_id):
        raise InputError("unknown upload; upload the files again", code="bad_upload_id")
    return home.root / "uploads" / upload_id


def prepare_uploads(home, upload_id, ingest_config, *, actor):
    """Prepare (or re-prepare with new options) the kept uploads into their one dataset.

    An upload is linked to its dataset on the first prepare (``dataset.id`` in the upload
    folder), so a re-prepare can only ever replace the dataset made from the same files, never
    one that another upload or a training job uses; the page cannot choose it. The same files,
    site key and options give the same pseudonyms and images, so a re-run with another window
    only changes what the window changes; caption edits are replaced.

    Returns:
        `PreparedView`
    """
    from ..dataset.prepare import new_dataset_id
    from ..dicom.pseudonym import Pseudonymizer, load_or_create_site_key
    from ..fileio import write_text_atomic
    from ..workflow import ingest

    folder = upload_folder(home, upload_id)
    inputs = sorted(folder.glob("*.upload"))
    if not inputs:
        raise InputError("the uploaded files are gone (erased after training or discarded); upload them again",
                         code="no_input")
    link = folder / DATASET_LINK
    dataset_id = link.read_text().strip() if link.is_file() else new_dataset_id()
    pseudonymizer = Pseudonymizer(load_or_create_site_key(home.site_key_path))
    result = ingest(home, inputs, home.datasets_dir / dataset_id, ingest_config, pseudonymizer, actor=actor,
                    overwrite=link.is_file(), dataset_id=dataset_id)
    write_text_atomic(link, dataset_id)
    return PreparedView(upload_id, result.dataset_id, result.report, read_captions(result.output_dir))


def discard_uploads(home, upload_id):
    """Erase the kept uploads (after training starts, or when the user discards them)."""
    folder = upload_folder(home, upload_id)
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def sweep_stale_uploads(home, max_age_s=UPLOAD_MAX_AGE_S, now=None):
    """Erase kept UI uploads older than ``max_age_s`` (start-up maintenance); returns how many."""
    root = home.root / "uploads"
    now = time.time() if now is None else now
    removed = 0
    for folder in root.glob(UPLOAD_PREFIX + "*") if root.is_dir() else ():
        if UPLOAD_ID.fullmatch(folder.name) and now - folder.stat().st_mtime > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def dataset_folder(home, dataset_id):
    """The folder of a prepared dataset (validated id)."""
    from ..naming import DATASET_ID_PATTERN

    if not isinstance(dataset_id, str) or not DATASET_ID_PATTERN.fullmatch(dataset_id):
        raise InputError("no dataset prepared yet: upload DICOM files first", code="no_dataset")
    folder = home.datasets_dir / dataset_id
    if not (folder / "metadata.csv").is_file():
        raise InputError("the prepared dataset is gone (erased); upload the files again", code="no_dataset")
    return folder


def read_captions(dataset_dir):
    """``[[file_name, caption], ...]`` from ``metadata.csv``."""
    with open(pathlib.Path(dataset_dir) / "metadata.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return [[row["file_name"], row["text"]] for row in reader]


@dataclasses.dataclass(frozen=True)
class CaptionEditResult:
    """Outcome of saving edited captions.

    Attributes:
        rows (`list[list[str]]`): the captions now in ``metadata.csv`` (refused edits reverted).
        changed (`int`): captions saved.
        refused (`list[tuple[int, str]]`): ``(row number from 1, kind of data found)``.
    """

    rows: list
    changed: int
    refused: list


def save_captions(home, dataset_id, edited_rows, *, actor):
    """Screen and save edited captions; refused ones keep their previous text.

    Every changed caption is checked against the dataset's keyed-hash screen of its source
    headers and the generic patterns; a refusal names the row and the kind of data, never the
    value. Saved atomically, with one ``caption_edit`` audit entry (counts only).

    Args:
        edited_rows (`list[list[str]]`): ``[file_name, caption]`` rows as the table holds them.

    Returns:
        `CaptionEditResult`
    """
    from ..dataset.phi_hashes import screen_caption_edit
    from ..dataset.prepare import metadata_csv
    from ..dicom.pseudonym import load_or_create_site_key
    from ..fileio import write_text_atomic
    from ..registry import Registry

    folder = dataset_folder(home, dataset_id)
    current = read_captions(folder)
    edits = _edits_by_file(edited_rows, current)
    key = load_or_create_site_key(home.site_key_path)
    rows, changed, refused = [], 0, []
    for number, (file_name, caption) in enumerate(current, start=1):
        new = edits.get(file_name, caption)
        if new != caption:
            try:
                screen_caption_edit(folder, new, key)
            except CaptionPHIError as exc:
                refused.append((number, exc.kind))
                new = caption
            else:
                changed += 1
        rows.append([file_name, new])
    if changed:
        write_text_atomic(folder / "metadata.csv", metadata_csv(rows))
    with Registry(home) as registry:
        registry.audit.append("caption_edit", actor=actor, target=dataset_id,
                              outcome="refused" if refused and not changed else "ok",
                              details={"dataset_id": dataset_id, "images": changed, "rejected": len(refused)})
    return CaptionEditResult(rows, changed, refused)


def _edits_by_file(edited_rows, current):
    known = {file_name for file_name, _ in current}
    edits = {}
    for row in edited_rows or ():
        if len(row) < 2 or not any(str(cell or "").strip() for cell in row):
            continue  # an empty row added with the table's "New row" button
        file_name, caption = str(row[0]), " ".join(str(row[1] if row[1] is not None else "").split())
        if file_name not in known:
            raise InputError("the caption table does not match the prepared images; prepare again",
                             code="bad_caption_table")
        if not caption:
            raise InputError(f"the caption of {file_name} is empty; every image needs a caption",
                             code="empty_caption")
        edits[file_name] = caption
    return edits


def thumbnails(home, dataset_id, limit=64):
    """``[(file_name, PNG bytes)]`` of the prepared images, downsized for the gallery.

    The gallery shows them as ``data:`` URIs, so no copy lands in Gradio's cache folder, where
    an erasure could not reach it.
    """
    from PIL import Image

    from ..dataset.images import png_bytes

    folder = dataset_folder(home, dataset_id)
    result = []
    for file_name, _ in read_captions(folder)[:limit]:
        with Image.open(folder / "images" / os.path.basename(file_name)) as image:
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            result.append((file_name, png_bytes(image.copy())))
    return result
