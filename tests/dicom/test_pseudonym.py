"""The site key and keyed pseudonyms."""

import datetime
import os
import stat

import pytest

from lib_lora_train.dicom.pseudonym import Pseudonymizer, load_or_create_site_key
from lib_lora_train.errors import HomeError


def test_site_key_created_once_owner_only(tmp_path):
    path = tmp_path / "site.key"
    key = load_or_create_site_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_site_key(path) == key


def test_site_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "site.key"
    load_or_create_site_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(HomeError, match="chmod 600"):
        load_or_create_site_key(path)


def test_damaged_site_key_is_refused(tmp_path):
    path = tmp_path / "site.key"
    path.write_text("not hex")
    os.chmod(path, 0o600)
    with pytest.raises(HomeError, match="restore it from backup"):
        load_or_create_site_key(path)


def test_pseudonyms_are_keyed_and_domain_separated():
    site, other = Pseudonymizer(b"a" * 32), Pseudonymizer(b"b" * 32)
    assert site.patient("12345") == site.patient(" 12345 ")
    assert site.patient("12345") != other.patient("12345")
    assert site.patient("12345")[1:] != site.study("12345")[1:]
    assert "12345" not in site.patient("12345")
    uid = site.uid("1.2.3")
    assert uid == site.uid("1.2.3") and uid != site.uid("1.2.4") and uid.startswith("2.25.")
    assert len(site.image_name("1.2.3", 0)) == 20 and site.image_name("1.2.3", 0) != site.image_name("1.2.3", 1)


def test_date_shift_is_stable_and_bounded():
    site = Pseudonymizer(b"a" * 32)
    shifts = {site.date_shift(site.patient(str(i))) for i in range(200)}
    assert all(-datetime.timedelta(days=3651) <= s <= -datetime.timedelta(days=30) for s in shifts)
    assert len(shifts) > 150
    assert site.date_shift("P1") == site.date_shift("P1")


def test_short_key_is_refused():
    with pytest.raises(ValueError):
        Pseudonymizer(b"short")
