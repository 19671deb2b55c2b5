"""Steps 1 and 2 of the tab: uploads leave Gradio's temp folder, prepare and re-prepare, caption edits."""

import csv
import pathlib
import os
import time

import pytest

from lib_lora_train.config import IngestConfig
from lib_lora_train.dicom.phantom import PhantomPatient
from lib_lora_train.errors import InputError
from lib_lora_train.registry import Registry
from lib_lora_train.ui import datasets


class TempFile:
    """What gradio 3 hands a handler: a wrapper whose ``name`` is the temp path."""

    def __init__(self, path):
        self.name = str(path)


def test_uploads_are_moved_out_of_the_temp_folder_and_named_by_position(home, gradio_uploads):
    temp_root = gradio_uploads[0].parents[1]
    upload_id = datasets.take_uploads(home, [TempFile(gradio_uploads[0]), *map(str, gradio_uploads[1:])])
    folder = datasets.upload_folder(home, upload_id)
    assert sorted(p.name for p in folder.iterdir()) == [f"{n:04d}.upload" for n in range(1, len(gradio_uploads) + 1)]
    assert list(temp_root.rglob("*")) == []  # files and their per-upload folders are gone
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_nothing_uploaded_is_a_clear_error(home):
    with pytest.raises(InputError, match="no file was uploaded"):
        datasets.take_uploads(home, [])


@pytest.mark.parametrize("upload_id", ["../secrets", "ui-../../x", "ui-0123", "", None])
def test_a_crafted_upload_id_cannot_leave_the_home(home, upload_id):
    with pytest.raises(InputError, match="unknown upload"):
        datasets.upload_folder(home, upload_id)


def test_prepare_then_rerender_with_another_window_keeps_ids_and_names(home, gradio_uploads):
    upload_id = datasets.take_uploads(home, gradio_uploads)
    first = datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off", resolution=64, window="file"),
                                     actor="alice")
    assert first.images == 4 and first.report["counts"]["patients"] == 2
    before = {row[0]: (home.datasets_dir / first.dataset_id / row[0]).read_bytes() for row in first.rows}
    second = datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off", resolution=64, window="bone",
                                                                    trigger_word="ctchest"),
                                      actor="alice")
    assert second.dataset_id == first.dataset_id
    assert [row[0] for row in second.rows] == [row[0] for row in first.rows]  # same pseudonyms
    assert all(row[1].startswith("ctchest") and "bone window" in row[1] for row in second.rows)
    after = {row[0]: (home.datasets_dir / first.dataset_id / row[0]).read_bytes() for row in second.rows}
    assert after != before  # the bone window changed the pixels
    with Registry(home) as registry:
        assert [e["action"] for e in registry.audit.latest(10)].count("ingest") == 2


def test_a_new_upload_never_replaces_another_uploads_dataset(home, gradio_uploads):
    """The dataset of an upload is fixed by the server at its first prepare, whatever the page holds."""
    first_upload = datasets.take_uploads(home, gradio_uploads[:2])
    first = datasets.prepare_uploads(home, first_upload, IngestConfig(ocr="off", resolution=64), actor="alice")
    manifest = (home.datasets_dir / first.dataset_id / "manifest.json").read_bytes()
    second_upload = datasets.take_uploads(home, gradio_uploads[2:])
    second = datasets.prepare_uploads(home, second_upload, IngestConfig(ocr="off", resolution=64), actor="alice")
    assert second.dataset_id != first.dataset_id
    assert (home.datasets_dir / first.dataset_id / "manifest.json").read_bytes() == manifest


def test_uploads_arriving_at_once_keep_every_file(home, gradio_uploads, tmp_path):
    import shutil
    import threading

    upload_id = datasets.take_uploads(home, gradio_uploads[:1])
    copies = []
    for n in range(40):
        folder = tmp_path / "gradio-parallel" / f"{n:040x}"
        folder.mkdir(parents=True)
        copies.append(shutil.copy(gradio_uploads[1 + n % 3], folder / "scan.dcm"))
    threads = [threading.Thread(target=datasets.take_uploads, args=(home, copies[i::4], upload_id)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(datasets.upload_folder(home, upload_id).glob("*.upload"))) == 41


def test_discarded_uploads_cannot_be_prepared_again(home, gradio_uploads):
    upload_id = datasets.take_uploads(home, gradio_uploads)
    assert datasets.discard_uploads(home, upload_id)
    with pytest.raises(InputError, match="upload them again"):
        datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off"), actor="alice")


def test_stale_uploads_are_swept_and_fresh_ones_kept(home, gradio_uploads):
    old = datasets.take_uploads(home, gradio_uploads[:1])
    fresh = datasets.take_uploads(home, gradio_uploads[1:])
    day_ago = time.time() - datasets.UPLOAD_MAX_AGE_S - 60
    os.utime(datasets.upload_folder(home, old), (day_ago, day_ago))
    assert datasets.sweep_stale_uploads(home) == 1
    assert not datasets.upload_folder(home, old).exists() and datasets.upload_folder(home, fresh).exists()


@pytest.fixture
def prepared(home, gradio_uploads):
    upload_id = datasets.take_uploads(home, gradio_uploads)
    return datasets.prepare_uploads(home, upload_id, IngestConfig(ocr="off", resolution=64), actor="alice")


def _metadata(home, dataset_id):
    with open(home.datasets_dir / dataset_id / "metadata.csv", newline="") as handle:
        return [[row["file_name"], row["text"]] for row in csv.DictReader(handle)]


def test_caption_edits_are_screened_saved_and_audited(home, prepared):
    rows = [list(row) for row in prepared.rows]
    rows[0][1] = f"CT of the chest of {PhantomPatient(0).family}"
    rows[1][1] = "CT scan of chest, nodule in the right upper lobe"
    rows[2][1] = "CT scan of chest, acquired 2024-03-21"
    outcome = datasets.save_captions(home, prepared.dataset_id, rows, actor="alice")
    assert outcome.changed == 1
    assert [number for number, _ in outcome.refused] == [1, 3]
    assert all(PhantomPatient(0).family not in kind for _, kind in outcome.refused)
    saved = _metadata(home, prepared.dataset_id)
    assert saved[0] == prepared.rows[0] and saved[2] == prepared.rows[2]  # refused edits reverted
    assert saved[1][1] == "CT scan of chest, nodule in the right upper lobe"
    assert outcome.rows == saved
    with Registry(home) as registry:
        entry = registry.audit.latest(1)[0]
    assert entry["action"] == "caption_edit" and entry["details"] == {
        "dataset_id": prepared.dataset_id, "images": 1, "rejected": 2}


def test_empty_rows_added_in_the_table_are_ignored(home, prepared):
    rows = [list(row) for row in prepared.rows] + [["", ""], [None, None]]
    outcome = datasets.save_captions(home, prepared.dataset_id, rows, actor="alice")
    assert outcome.changed == 0 and outcome.rows == prepared.rows


def test_caption_table_that_does_not_match_the_images_is_refused(home, prepared):
    with pytest.raises(InputError, match="does not match"):
        datasets.save_captions(home, prepared.dataset_id, [["images/other.png", "x"]], actor="alice")
    with pytest.raises(InputError, match="is empty"):
        datasets.save_captions(home, prepared.dataset_id, [[prepared.rows[0][0], "  "]], actor="alice")


def test_thumbnails_are_small_pngs_of_every_image(home, prepared):
    from PIL import Image
    import io

    thumbnails = datasets.thumbnails(home, prepared.dataset_id)
    assert [name for name, _ in thumbnails] == [row[0] for row in prepared.rows]
    for _, data in thumbnails:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG" and max(image.size) <= datasets.THUMBNAIL_SIDE


def test_gradio_3s_other_copies_of_an_upload_are_removed_too(home, tmp_path, gradio_uploads):
    """gradio 3.41 keeps the upload route's copy (``orig_name``) and an empty temp file per upload."""
    import tempfile

    temp_root = gradio_uploads[0].parents[1]
    route_copy = temp_root / ("f" * 40) / gradio_uploads[0].name
    route_copy.parent.mkdir()
    route_copy.write_bytes(gradio_uploads[0].read_bytes())
    wrapper = tempfile.NamedTemporaryFile(delete=False, dir=temp_root)
    empty = pathlib.Path(wrapper.file.name)
    wrapper.name, wrapper.orig_name = str(gradio_uploads[0]), str(route_copy)
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"not gradio's")
    other = tempfile.NamedTemporaryFile(delete=False, dir=temp_root)
    other.name, other.orig_name = str(gradio_uploads[1]), str(outside)  # never deleted: not in the temp folder
    datasets.take_uploads(home, [wrapper, other])
    assert not route_copy.exists() and not route_copy.parent.exists() and not empty.exists()
    assert outside.exists()


def test_a_refused_users_files_are_deleted_from_gradios_folder(gradio_uploads):
    temp_root = gradio_uploads[0].parents[1]
    datasets.discard_gradio_files([TempFile(gradio_uploads[0]), str(gradio_uploads[1])])
    assert sorted(p.name for p in temp_root.rglob("*.dcm")) == sorted(p.name for p in gradio_uploads[2:])


def test_uploads_in_several_goes_are_numbered_on(home, gradio_uploads):
    upload_id = datasets.take_uploads(home, gradio_uploads[:2])
    assert datasets.take_uploads(home, gradio_uploads[2:], upload_id) == upload_id
    folder = datasets.upload_folder(home, upload_id)
    assert sorted(p.name for p in folder.iterdir()) == ["0001.upload", "0002.upload", "0003.upload", "0004.upload"]


def test_sweep_folder_empties_it(tmp_path):
    (tmp_path / "g" / "abc").mkdir(parents=True)
    (tmp_path / "g" / "abc" / "Doe^John.dcm").write_bytes(b"x")
    (tmp_path / "g" / "tmp123").write_bytes(b"")
    datasets.sweep_folder(tmp_path / "g")
    assert (tmp_path / "g").is_dir() and not list((tmp_path / "g").iterdir())
    datasets.sweep_folder(tmp_path / "missing")  # nothing to do
