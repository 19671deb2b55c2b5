"""Keyed pseudonyms: the per-site secret and everything derived from it with HMAC-SHA256.

A plain hash of a PatientID or UID can be reversed by anyone who holds the original (hash
it and compare); a keyed hash cannot without the site key (EDPB Guidelines 01/2025 on
pseudonymisation). Every derived value uses its own domain prefix, so a UID pseudonym can
never be confused with a patient pseudonym.
"""

import datetime
import hashlib
import hmac
import logging
import os
import pathlib
import secrets
import stat
import uuid

from ..errors import HomeError

logger = logging.getLogger(__name__)

KEY_BYTES = 32
# Shift dates back by 30 days to ~10 years: far enough to hide the real date, small enough
# to keep the season-free ordering of a patient's studies.
DATE_SHIFT_MIN_DAYS = 30
DATE_SHIFT_SPAN_DAYS = 3621


def load_or_create_site_key(path):
    """Return the site key stored at ``path``, creating it (owner-only) on first use.

    Args:
        path (`pathlib.Path`): the key file, inside the data home's ``secrets`` folder.

    Returns:
        `bytes`: the 32-byte key.

    Raises:
        HomeError: the file is unreadable, malformed, or readable by other users.
    """
    path = pathlib.Path(path)
    if path.exists():
        return _read_site_key(path)
    key = secrets.token_bytes(KEY_BYTES)
    # Written whole to a private temporary file, then linked into place: os.link fails if the
    # key appeared meanwhile (another process won the race), and nobody ever sees a partial key.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return _read_site_key(path)
    except OSError as exc:
        raise HomeError(f"cannot create the site key in {path.parent} ({exc.strerror})") from None
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("created a new site key for pseudonyms")
    return key


def _read_site_key(path):
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HomeError(f"the site key {path} is readable by other users; run: chmod 600 {path}")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        raise HomeError(f"the site key {path} is unreadable or not a hex key; restore it from backup") from None
    if len(key) != KEY_BYTES:
        raise HomeError(f"the site key {path} has {len(key)} bytes, expected {KEY_BYTES}; restore it from backup")
    return key


class Pseudonymizer:
    """Derives every pseudonym of the product from one site key.

    Args:
        key (`bytes`): the site key (see :func:`load_or_create_site_key`).
    """

    def __init__(self, key):
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("the site key must be at least 16 bytes")
        self._key = key

    @property
    def site_key(self):
        """The key itself, for keyed indexes that must stay comparable across runs (``phi_hashes``)."""
        return self._key

    def _digest(self, domain, *parts):
        message = domain.encode() + b"\x00" + b"\x00".join(str(p).encode("utf-8") for p in parts)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def patient(self, patient_id):
        """Pseudonym of a patient: ``P`` + 32 hex digits of HMAC(site key, PatientID).

        The same id (surrounding spaces ignored) always gives the same pseudonym, so
        "forget this patient" can find every dataset and adapter that used them.
        """
        return "P" + self._digest("patient", str(patient_id).strip()).hex()[:32]

    def study(self, study_uid):
        """Pseudonym of a study, from its Study Instance UID."""
        return "S" + self._digest("study", str(study_uid).strip()).hex()[:32]

    def uid(self, original_uid):
        """Replacement UID (action U): ``2.25.`` + a UUIDv8 built from the keyed hash.

        Consistent (same input, same output) within a site and unlinkable without the key.
        """
        raw = bytearray(self._digest("uid", str(original_uid).strip())[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (custom)
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        return f"2.25.{uuid.UUID(bytes=bytes(raw)).int}"

    def image_name(self, source_uid, frame_index):
        """File stem of a training image: 20 hex digits, no trace of the source UID."""
        return self._digest("image", str(source_uid), int(frame_index)).hex()[:20]

    def date_shift(self, patient_pseudonym):
        """Per-patient date offset (a negative `datetime.timedelta`), consistent across files."""
        value = int.from_bytes(self._digest("dateshift", patient_pseudonym)[:8], "big")
        return -datetime.timedelta(days=DATE_SHIFT_MIN_DAYS + value % DATE_SHIFT_SPAN_DAYS)
