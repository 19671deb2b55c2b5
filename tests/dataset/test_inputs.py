"""Expanding inputs: files, folders, zip archives, and every unsafe archive shape."""

import io
import stat
import zipfile

import pytest

from lib_lora_train.dataset.inputs import expand_inputs
from lib_lora_train.dicom.phantom import PhantomPatient, make_ct_slice

LIMITS = dict(max_file_bytes=10 * 1024 * 1024, max_zip_ratio=200, max_zip_bytes=100 * 1024 * 1024)


def _dicom_bytes(index=0):
    buffer = io.BytesIO()
    make_ct_slice(PhantomPatient(index), 0, size=32).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _errors(sources):
    return [source.error.code if source.error else None for source in sources]


def test_files_folders_and_missing_paths(tmp_path):
    (tmp_path / "series" / "sub").mkdir(parents=True)
    (tmp_path / "series" / "a.dcm").write_bytes(_dicom_bytes(0))
    (tmp_path / "series" / "sub" / "NOEXTENSION").write_bytes(_dicom_bytes(1))
    single = tmp_path / "single.dcm"
    single.write_bytes(_dicom_bytes(2))
    sources = expand_inputs([tmp_path / "series", single, tmp_path / "SMITH_JOHN_missing.dcm"], **LIMITS)
    assert [s.label for s in sources] == ["input 1, file 1", "input 1, file 2", "input 2", "input 3"]
    assert _errors(sources) == [None, None, None, "not_found"]
    assert sources[0].read() == _dicom_bytes(0)
    assert "SMITH" not in str(sources[3].error)  # named by position, never by path


def test_zip_members_are_read_in_memory(tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("DOE_JANE/slice1", _dicom_bytes(0))
        zf.writestr("DOE_JANE/slice2.dcm", _dicom_bytes(1))
        zf.writestr("folder/", b"")
    before = set(tmp_path.rglob("*"))
    sources = expand_inputs([archive], **LIMITS)
    assert [s.label for s in sources] == ["input 1, member 1", "input 1, member 2"]
    assert sources[1].read() == _dicom_bytes(1)
    assert set(tmp_path.rglob("*")) == before  # nothing extracted to disk


def _zip_with(tmp_path, name, data, **info):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        member = zipfile.ZipInfo(name)
        for key, value in info.items():
            setattr(member, key, value)
        zf.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("good.dcm", _dicom_bytes(0))
    return archive


@pytest.mark.parametrize("name", ["../escape.dcm", "/etc/passwd", "a/../../b.dcm", "C:/windows/x.dcm"])
def test_zip_path_traversal_is_refused_and_the_rest_goes_through(tmp_path, name):
    sources = expand_inputs([_zip_with(tmp_path, name, b"x")], **LIMITS)
    assert _errors(sources) == ["zip_unsafe", None]
    assert sources[1].read() == _dicom_bytes(0)


def test_zip_symlink_member_is_refused(tmp_path):
    archive = _zip_with(tmp_path, "link", b"/etc/passwd", external_attr=(stat.S_IFLNK | 0o777) << 16)
    assert _errors(expand_inputs([archive], **LIMITS)) == ["zip_unsafe", None]


def test_zip_bomb_ratio_and_total_size_are_refused(tmp_path):
    bomb = _zip_with(tmp_path, "zeros.dcm", b"\x00" * (8 * 1024 * 1024))
    sources = expand_inputs([bomb], **LIMITS)
    assert _errors(sources) == ["zip_unsafe", None]
    assert "compression ratio" in str(sources[0].error)
    small_limit = dict(LIMITS, max_zip_bytes=1024)
    assert _errors(expand_inputs([bomb], **small_limit)) == ["zip_too_large"]


def test_member_larger_than_declared_is_refused(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.dcm", b"A" * 1000)
    raw = bytearray(archive.read_bytes())
    # Shrink the declared size in the central directory (offset 24 of the entry) to 10 bytes.
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24:central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    sources = expand_inputs([archive], **LIMITS)
    with pytest.raises(Exception) as caught:
        sources[0].read()
    assert getattr(caught.value, "code", "") in ("zip_unsafe", "bad_zip")


def test_nested_zip_and_oversized_file(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.dcm", _dicom_bytes(0))
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("inner.zip", inner.getvalue())
    sources = expand_inputs([outer], **LIMITS)
    with pytest.raises(Exception) as caught:
        sources[0].read()
    assert caught.value.code == "nested_zip"
    big = tmp_path / "big.dcm"
    big.write_bytes(_dicom_bytes(0))
    with pytest.raises(Exception) as caught:
        expand_inputs([big], **dict(LIMITS, max_file_bytes=100))[0].read()
    assert caught.value.code == "too_large"


def test_corrupt_zip_gives_one_clear_error(tmp_path):
    broken = tmp_path / "broken.zip"
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("a.dcm", _dicom_bytes(0))
    data = good.read_bytes()
    broken.write_bytes(data[:40] + b"\xff" * 20 + data[60:])
    sources = expand_inputs([broken], **LIMITS)
    assert len(sources) == 1
    if sources[0].error is None:
        with pytest.raises(Exception) as caught:
            sources[0].read()
        assert caught.value.code in ("bad_zip", "zip_unsafe")
