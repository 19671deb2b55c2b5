"""Tests of lib_lora_train/dataset/phi_hashes.py: keyed-hash caption screening matches the live check.

Failure messages name element keywords and kinds only, never header values.
"""

import dataclasses
import json

import pydicom
import pytest

from lib_lora_train.dataset import phi_hashes as ph
from lib_lora_train.dataset.phi_check import find_phi
from lib_lora_train.dicom import identifiers as ids
from lib_lora_train.errors import CaptionPHIError
from tests.conftest import PHI_FILES
from tests.dataset.test_phi_check import CLEAN_CAPTIONS, _planted_values

pytestmark = pytest.mark.filterwarnings("ignore:The value length")

KEY = b"site-key-A-0123456789abcdef"
OTHER_KEY = b"site-key-B-0123456789abcdef"


def _load(corpus_file, name):
    ds = pydicom.dcmread(corpus_file(name))
    index = ids.harvest_identifiers(ds)
    return ds, index, ph.hash_index(index, KEY)


def _hashed_kind(caption, hashed):
    try:
        ph.check_caption_hashed(caption, hashed, KEY)
    except CaptionPHIError as err:
        return err.kind
    return None


@pytest.mark.parametrize("name", PHI_FILES)
def test_planted_values_rejected_with_same_kind(corpus_file, name):
    ds, index, hashed = _load(corpus_file, name)
    misses = []
    for label, value, _ in _planted_values(ds):
        caption = f"CT scan of chest, {value}, axial slice, lung window"
        live = find_phi(caption, index)
        if live is not None and _hashed_kind(caption, hashed) != live:
            misses.append((label, live))
    assert misses == []


@pytest.mark.parametrize("name", PHI_FILES)
def test_every_index_value_gives_the_live_kind(corpus_file, name):
    _, index, hashed = _load(corpus_file, name)
    misses = []
    for value in index.values:
        caption = f"MRI of brain, {value.normalized}, axial"
        live, hashed_kind = find_phi(caption, index), ph.find_phi_hashed(caption, hashed, KEY)
        if hashed_kind is None or (hashed_kind != live and len(value.normalized.split()) <= ph.MAX_TOKENS_CAP):
            misses.append((value.keyword, live, hashed_kind))
    assert misses == []


@pytest.mark.parametrize("name", PHI_FILES)
def test_clean_captions_accepted(corpus_file, name):
    _, index, hashed = _load(corpus_file, name)
    rejected = [c for c in CLEAN_CAPTIONS if find_phi(c, index) is None and _hashed_kind(c, hashed) is not None]
    assert rejected == []


@pytest.mark.parametrize(
    "name, keyword, kind",
    [
        ("eCT_Supplemental.dcm", "PerformingPhysicianName", ids.KIND_NAME),
        ("humans/ctbrain1.dcm", "DeviceSerialNumber", ids.KIND_DEVICE),
        ("RG1_UNCR.dcm", "OtherPatientIDs", ids.KIND_ID),
        ("MR-SIEMENS-DICOM-WithOverlays.dcm", "StudyInstanceUID", ids.KIND_UID),
    ],
)
def test_more_header_values_are_rejected(corpus_file, name, keyword, kind):
    ds, _, hashed = _load(corpus_file, name)
    value = str(ds[keyword].value).replace("^", " ")
    assert ph.find_phi_hashed(f"MRI of brain, {value}", hashed, KEY) == kind


def test_values_with_other_separators_are_rejected():
    index = ids.IdentifierIndex(
        tuple(ids.IdentifyingValue(ids.KIND_ID, "PatientID", f) for f in ("11 05 25 142825", "110525142825"))
    )
    hashed = ph.hash_index(index, KEY)
    for text in ("id 11-05-25-142825", "id 110525142825", "id 11/05/25/142825", "id 1105-25142825"):
        assert ph.find_phi_hashed(text, hashed, KEY) == find_phi(text, index) == ids.KIND_ID


def test_no_match_inside_a_longer_token():
    index = ids.IdentifierIndex((ids.IdentifyingValue(ids.KIND_NAME, "PatientName", "perfusion"),))
    hashed = ph.hash_index(index, KEY)
    assert ph.find_phi_hashed("CT hyperperfusion of brain", hashed, KEY) is None
    assert ph.find_phi_hashed("CT perfusion of brain", hashed, KEY) == ids.KIND_NAME


def test_long_phrase_prefix_is_stricter_than_live():
    words = " ".join(("alpha", "bravo", "charlie", "delta", "echo") * 3)
    index = ids.IdentifierIndex((ids.IdentifyingValue(ids.KIND_FREE_TEXT, "ImageComments", words),))
    hashed = ph.hash_index(index, KEY)
    prefix = " ".join(words.split()[: ph.MAX_TOKENS_CAP])
    assert hashed.max_tokens == ph.MAX_TOKENS_CAP
    assert ph.find_phi_hashed(f"note {words}", hashed, KEY) == ids.KIND_FREE_TEXT
    assert find_phi(f"note {prefix}", index) is None
    assert ph.find_phi_hashed(f"note {prefix}", hashed, KEY) == ids.KIND_FREE_TEXT


def test_generic_patterns_still_run():
    hashed = ph.hash_index(ids.IdentifierIndex(), KEY)
    assert ph.find_phi_hashed("scan on 2021-03-12", hashed, KEY) == "a date"
    with pytest.raises(TypeError, match="must be text"):
        ph.find_phi_hashed(None, hashed, KEY)


@pytest.mark.parametrize("name", PHI_FILES)
def test_json_holds_no_harvested_value(corpus_file, name):
    _, index, hashed = _load(corpus_file, name)
    text = hashed.to_json()
    payload = json.loads(text)
    assert set(payload) == {"format", "key_id", "max_tokens", "kinds", "seal"}
    without_digests = text
    for digest in hashed.digests:
        without_digests = without_digests.replace(digest, "")
    without_digests = without_digests.replace(hashed.seal, "").casefold()
    leaks = [raw for raw in index.all_raw_strings() if raw.casefold() in without_digests]
    assert leaks == []
    assert ph.HashedIdentifierIndex.from_json(text) == hashed


def test_round_trip_keeps_matching(corpus_file):
    ds, _, hashed = _load(corpus_file, "humans/ctbrain1.dcm")
    loaded = ph.HashedIdentifierIndex.from_json(hashed.to_json())
    assert ph.find_phi_hashed(f"CT scan of head, {ds.AccessionNumber}", loaded, KEY) == ids.KIND_ID


def test_other_key_gives_no_matches(corpus_file):
    ds, index, hashed = _load(corpus_file, "humans/ctbrain1.dcm")
    other = ph.hash_index(index, OTHER_KEY)
    assert other.digests.isdisjoint(hashed.digests)
    captions = [f"CT scan of chest, {value}" for _, value, _ in _planted_values(ds)]
    forms = {f for c in captions for f in ph.caption_forms(c, hashed.max_tokens)}
    assert {ph._digest(OTHER_KEY, f) for f in forms}.isdisjoint(hashed.digests)


def test_other_key_or_tampered_index_is_refused(corpus_file):
    hashed = _load(corpus_file, "humans/ctbrain1.dcm")[2]
    caption = "CT scan of head"
    with pytest.raises(ValueError, match="another site key"):
        ph.find_phi_hashed(caption, hashed, OTHER_KEY)
    forged = dataclasses.replace(hashed, key_id=ph.key_id(OTHER_KEY))
    with pytest.raises(ValueError, match="another site key|altered"):
        ph.find_phi_hashed(caption, forged, OTHER_KEY)
    payload = json.loads(hashed.to_json())
    payload["kinds"] = payload["kinds"][1:]
    tampered = ph.HashedIdentifierIndex.from_json(json.dumps(payload))
    with pytest.raises(ValueError, match="altered"):
        ph.check_caption_hashed(caption, tampered, KEY)


@pytest.mark.parametrize("text", ["", "{}", "[1]", '{"format": "x", "key_id": "a", "max_tokens": 1, "kinds": [], "seal": ""}'])
def test_malformed_json_is_refused(text):
    with pytest.raises(ValueError, match="not a hashed identifier index"):
        ph.HashedIdentifierIndex.from_json(text)


def test_short_key_is_refused():
    with pytest.raises(ValueError, match="site key"):
        ph.hash_index(ids.IdentifierIndex(), b"short")
