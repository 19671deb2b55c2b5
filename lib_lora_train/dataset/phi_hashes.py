"""Screen captions against a source file's header values without keeping those values.

Staff edit captions long after ingest, when only de-identified copies exist, yet every edit
must still be checked against the identifying values of its source file's original header.
Keeping those values would defeat the de-identification (GDPR Art. 5(1)(c), data
minimisation), so at ingest the :class:`~lib_lora_train.dicom.identifiers.IdentifierIndex`
is turned into keyed hashes: HMAC-SHA256 under a secret site key of every normalised form
that :mod:`~lib_lora_train.dataset.phi_check` matches on. A caption is checked by
normalising it the same way, hashing every token n-gram and looking the digests up. The
stored index holds only digests and kinds; without the site key it cannot be reversed,
not even by guessing dates (so the key must live in the site's secret store, never next to
the index).

Parity with :func:`~lib_lora_train.dataset.phi_check.find_phi`: the live check looks for
``" value "`` in ``" normalize_text(caption) "`` and ``" compact_text(caption) "``, i.e. on
whole tokens of either view, so hashing every token n-gram of both views finds exactly the
same values, and the longest one (ties: index order) names the kind. The one difference:
values longer than ``max_tokens`` tokens (long free-text phrases) are stored as the digest of
their first ``max_tokens`` tokens, so a caption holding only that prefix is rejected too
(stricter than the live check, never looser). Generic patterns run unchanged.
"""

import dataclasses
import hashlib
import hmac
import json
import logging
import re

from ..dicom.identifiers import compact_text, normalize_text
from ..errors import CaptionPHIError
from .phi_check import find_phi

logger = logging.getLogger(__name__)

DIGEST_HEX = 32
MAX_TOKENS_CAP = 12
MIN_KEY_BYTES = 16
FORMAT = "lib_lora_train.phi_hashes/1"

_DIGEST_PREFIX = b"phi\x00"
_KEY_ID_MESSAGE = b"key-id"
_SEAL_PREFIX = b"seal\x00"
_KEY_ID_HEX = 8
_MAX_TOKENS_LIMIT = 256
_HEX_DIGEST = re.compile(rf"[0-9a-f]{{{DIGEST_HEX}}}")


@dataclasses.dataclass(frozen=True)
class HashedIdentifierIndex:
    """The keyed hashes of one source file's identifying values (no value, no reversible form).

    Attributes:
        key_id (`str`): short id of the site key (first 8 hex of HMAC(key, ``b"key-id"``)).
        digests (`frozenset[str]`): truncated hex HMAC-SHA256 of each normalised form.
        kinds (`dict[str, str]`): digest -> kind phrase, in index order (breaks length ties).
        max_tokens (`int`): longest hashed form in tokens; captions are hashed up to this n.
        seal (`str`): HMAC of all the above under the key; detects edits of a stored index.
    """

    key_id: str
    digests: frozenset
    kinds: dict
    max_tokens: int
    seal: str = ""

    def __repr__(self):
        return f"HashedIdentifierIndex(key_id={self.key_id!r}, {len(self.digests)} digests)"

    def to_json(self):
        """Serialise for a dataset's manifest folder.

        Returns:
            `str`: JSON with the key id, digests, kinds, ``max_tokens`` and seal only.
        """
        payload = {
            "format": FORMAT, "key_id": self.key_id, "max_tokens": self.max_tokens,
            "kinds": [[digest, kind] for digest, kind in self.kinds.items()], "seal": self.seal,
        }
        return json.dumps(payload, indent=1, ensure_ascii=True)

    @classmethod
    def from_json(cls, text):
        """Load an index written by :meth:`to_json`.

        Args:
            text (`str`): the JSON text.

        Returns:
            `HashedIdentifierIndex`: the index; its seal is checked when it is used with a key.

        Raises:
            ValueError: if the text is not such an index (wrong format, malformed digests).
        """
        try:
            payload = json.loads(text)
            kinds = {str(digest): str(kind) for digest, kind in payload["kinds"]}
            index = cls(str(payload["key_id"]), frozenset(kinds), kinds, int(payload["max_tokens"]),
                        str(payload["seal"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a hashed identifier index: {type(err).__name__}") from None
        if payload.get("format") != FORMAT:
            raise ValueError("not a hashed identifier index: unknown format")
        _check_shape(index)
        return index


def key_id(key):
    """Short public id of a site key, to tell which key an index was made with.

    Args:
        key (`bytes`): the secret site key (at least 16 bytes).

    Returns:
        `str`: 8 hex characters.
    """
    return _hmac(_check_key(key), _KEY_ID_MESSAGE)[:_KEY_ID_HEX]


def hash_index(index, key, max_tokens_cap=MAX_TOKENS_CAP):
    """Turn a live identifier index into keyed hashes of the forms the live check matches on.

    Args:
        index (`IdentifierIndex`): from :func:`~lib_lora_train.dicom.identifiers.harvest_identifiers`.
        key (`bytes`): the secret site key (at least 16 bytes).
        max_tokens_cap (`int`, *optional*): longest n-gram hashed; longer values keep only
            their first ``max_tokens_cap`` tokens.

    Returns:
        `HashedIdentifierIndex`: digests and kinds, no values.
    """
    _check_key(key)
    if not 1 <= max_tokens_cap <= _MAX_TOKENS_LIMIT:
        raise ValueError(f"max_tokens_cap must be 1..{_MAX_TOKENS_LIMIT}")
    kinds, longest = {}, 1
    for value in index.values:
        tokens = value.normalized.split()[:max_tokens_cap]
        longest = max(longest, len(tokens))
        kinds.setdefault(_digest(key, " ".join(tokens)), value.kind)
    return _sealed(key, kinds, longest)


def find_phi_hashed(text, hashed, key):
    """Return the kind of personal data in a text, or None; the hashed twin of ``find_phi``.

    Args:
        text (`str`): the caption (or trigger word, style phrase) to check.
        hashed (`HashedIdentifierIndex`): the source file's hashed index.
        key (`bytes`): the site key the index was made with.

    Returns:
        `str | None`: the kind phrase (header kinds first, then generic patterns); never a value.

    Raises:
        ValueError: if the key is not the index's key or the index was altered.
        TypeError: if the text is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"a caption must be text, got {type(text).__name__}")
    _verify(hashed, key)
    kind = _longest_hashed_match(text, hashed, key)
    if kind is not None:
        logger.info("caption rejected: %s (hashed header)", kind)
        return kind
    return find_phi(text)


def check_caption_hashed(text, hashed, key):
    """Raise if a text contains personal data; see :func:`find_phi_hashed`.

    Raises:
        CaptionPHIError: with the kind of data found (never the value).
    """
    kind = find_phi_hashed(text, hashed, key)
    if kind is not None:
        raise CaptionPHIError(kind)


def caption_forms(text, max_tokens):
    """Every token n-gram (n = 1..max_tokens) of both normalised views of a text.

    Args:
        text (`str`): the caption.
        max_tokens (`int`): longest n-gram.

    Returns:
        `list[str]`: distinct n-grams, as the live check's needles would read them.
    """
    forms = {}
    for view in (normalize_text(text), compact_text(text)):
        tokens = view.split()
        for start in range(len(tokens)):
            for end in range(start + 1, min(start + max_tokens, len(tokens)) + 1):
                forms.setdefault(" ".join(tokens[start:end]), None)
    return list(forms)


def _longest_hashed_match(text, hashed, key):
    """Kind of the longest matching n-gram; ties go to the earlier value, as in the live check."""
    rank = {digest: i for i, digest in enumerate(hashed.kinds)}
    best = None
    for form in caption_forms(text, hashed.max_tokens):
        digest = _digest(key, form)
        if digest in hashed.digests:
            candidate = (len(form), -rank[digest], digest)
            best = candidate if best is None or candidate > best else best
    return None if best is None else hashed.kinds[best[2]]


def _verify(hashed, key):
    if not hmac.compare_digest(hashed.key_id, key_id(key)):
        raise ValueError("the hashed identifier index was made with another site key")
    _check_shape(hashed)
    expected = _seal(key, hashed.kinds, hashed.max_tokens)
    if not hmac.compare_digest(hashed.seal, expected):
        raise ValueError("the hashed identifier index was altered (seal mismatch)")


def _check_shape(hashed):
    if hashed.digests != frozenset(hashed.kinds) or not 1 <= hashed.max_tokens <= _MAX_TOKENS_LIMIT:
        raise ValueError("not a hashed identifier index: inconsistent digests or token count")
    if not all(_HEX_DIGEST.fullmatch(d) for d in hashed.digests):
        raise ValueError("not a hashed identifier index: malformed digest")


def _sealed(key, kinds, max_tokens):
    return HashedIdentifierIndex(key_id(key), frozenset(kinds), kinds, max_tokens, _seal(key, kinds, max_tokens))


def _seal(key, kinds, max_tokens):
    canonical = json.dumps([key_id(key), max_tokens, list(kinds.items())], separators=(",", ":"))
    return _hmac(key, _SEAL_PREFIX + canonical.encode("utf-8"))


def _digest(key, form):
    return _hmac(key, _DIGEST_PREFIX + form.encode("utf-8"))[:DIGEST_HEX]


def _hmac(key, message):
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _check_key(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the site key must be at least {MIN_KEY_BYTES} bytes")
    return bytes(key)


def screen_caption_edit(dataset_dir, caption, key):
    """Screen a caption edited after ingest against its dataset's ``phi_screen.json``.

    Raises:
        CaptionPHIError: the caption names an identifying value of any of the dataset's source
            files, or matches a generic pattern (a date, an e-mail address, ...).
        ValueError: the screen was made with another site key or has been altered.
    """
    import pathlib

    text = (pathlib.Path(dataset_dir) / "phi_screen.json").read_text()
    check_caption_hashed(caption, HashedIdentifierIndex.from_json(text), key)
