"""Which installed package decodes which transfer syntax, and clean errors when none does.

pydicom 3 decodes compressed pixel data through optional plugins (python-gdcm, pylibjpeg
with its libjpeg/openjpeg/rle backends, pyjpegls, Pillow). This module tells, before any
decoding, whether a file's (0002,0010) Transfer Syntax UID can be decoded here and, if
not, which ``pip install`` would fix it; and it turns decoding exceptions into
:class:`~lib_lora_train.errors.DicomDecodeError` messages that never quote header values.

Measured caveats (pydicom 3.0.2, see DICOM_NOTES 3.3):

* pydicom's Pillow plugin requires Pillow >= 10, so under the WebUI's Pillow 9.5 it is
  unavailable and JPEG Baseline / JPEG 2000 need python-gdcm or pylibjpeg.
* gdcm and Pillow refuse JPEG Extended with 12-bit samples; only pylibjpeg-libjpeg
  (GPL-3.0) decodes it, although pydicom reports gdcm and Pillow as "available".
"""

import dataclasses
import logging
import re

from pydicom import uid as dicom_uid
from pydicom.pixels.decoders.base import get_decoder

from lib_lora_train.errors import DicomDecodeError, DicomError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DecoderOption:
    """One pydicom decoding plugin and what to install to make it available.

    Attributes:
        plugin (`str`): pydicom 3 plugin label (``Decoder.available_plugins``).
        pip (`str`): arguments of the ``pip install`` that provides it.
        max_bits_stored (`int`, *optional*): the plugin refuses samples with more
            (0028,0101) Bits Stored than this, although pydicom lists it as available.
    """

    plugin: str
    pip: str
    max_bits_stored: int | None = None


@dataclasses.dataclass(frozen=True)
class SyntaxDecoders:
    """A transfer syntax, its human name and the plugins that decode it.

    Attributes:
        name (`str`): short human name, safe to show (it is not personal data).
        options (`tuple[DecoderOption, ...]`): in order of recommendation; empty when
            pydicom decodes the syntax natively (uncompressed, deflated).
    """

    name: str
    options: tuple[DecoderOption, ...] = ()


_GDCM = DecoderOption("gdcm", "python-gdcm")
_LIBJPEG = DecoderOption("pylibjpeg", "pylibjpeg pylibjpeg-libjpeg")
_OPENJPEG = DecoderOption("pylibjpeg", "pylibjpeg pylibjpeg-openjpeg")
_PILLOW = DecoderOption("pillow", "Pillow>=10.0")
_JPEG_LS = (_GDCM, DecoderOption("pyjpegls", "pyjpegls"), _LIBJPEG)
_JPEG_2000 = (_OPENJPEG, _GDCM, _PILLOW)
_HTJ2K = (_OPENJPEG,)

TRANSFER_SYNTAX_DECODERS = {
    dicom_uid.ImplicitVRLittleEndian: SyntaxDecoders("Implicit VR Little Endian"),
    dicom_uid.ExplicitVRLittleEndian: SyntaxDecoders("Explicit VR Little Endian"),
    dicom_uid.DeflatedExplicitVRLittleEndian: SyntaxDecoders("Deflated Explicit VR Little Endian"),
    dicom_uid.ExplicitVRBigEndian: SyntaxDecoders("Explicit VR Big Endian"),
    dicom_uid.JPEGBaseline8Bit: SyntaxDecoders("JPEG Baseline (8-bit)", (_GDCM, _LIBJPEG, _PILLOW)),
    # gdcm and Pillow only handle the 8-bit variant of process 2/4 (pydicom raises
    # "does not support 'JPEG Extended' for samples with 12-bit precision").
    dicom_uid.JPEGExtended12Bit: SyntaxDecoders(
        "JPEG Extended (12-bit)",
        (
            _LIBJPEG,
            dataclasses.replace(_GDCM, max_bits_stored=8),
            dataclasses.replace(_PILLOW, max_bits_stored=8),
        ),
    ),
    dicom_uid.JPEGLossless: SyntaxDecoders("JPEG Lossless (Process 14)", (_GDCM, _LIBJPEG)),
    dicom_uid.JPEGLosslessSV1: SyntaxDecoders("JPEG Lossless SV1", (_GDCM, _LIBJPEG)),
    dicom_uid.JPEGLSLossless: SyntaxDecoders("JPEG-LS Lossless", _JPEG_LS),
    dicom_uid.JPEGLSNearLossless: SyntaxDecoders("JPEG-LS Near-Lossless", _JPEG_LS),
    dicom_uid.JPEG2000Lossless: SyntaxDecoders("JPEG 2000 Lossless", _JPEG_2000),
    dicom_uid.JPEG2000: SyntaxDecoders("JPEG 2000", _JPEG_2000),
    dicom_uid.HTJ2KLossless: SyntaxDecoders("HTJ2K Lossless", _HTJ2K),
    dicom_uid.HTJ2KLosslessRPCL: SyntaxDecoders("HTJ2K Lossless RPCL", _HTJ2K),
    dicom_uid.HTJ2K: SyntaxDecoders("HTJ2K", _HTJ2K),
    dicom_uid.RLELossless: SyntaxDecoders(
        "RLE Lossless",
        (DecoderOption("pydicom", "pydicom"), DecoderOption("pylibjpeg", "pylibjpeg pylibjpeg-rle")),
    ),
}


def transfer_syntax(ds):
    """Return the (0002,0010) Transfer Syntax UID of a dataset.

    Raises:
        DicomDecodeError: code ``"decode_failed"``, the file meta has no transfer syntax, so
            the encoding of (7FE0,0010) Pixel Data is unknown.
    """
    file_meta = getattr(ds, "file_meta", None)
    value = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not value:
        raise DicomDecodeError(
            "cannot decode pixel data: the file meta has no (0002,0010) Transfer Syntax UID",
            code="decode_failed",
        )
    return dicom_uid.UID(str(value))


def syntax_name(uid):
    """Short human name of a transfer syntax (pydicom's name for ones not in the table)."""
    entry = TRANSFER_SYNTAX_DECODERS.get(uid)
    return entry.name if entry is not None else dicom_uid.UID(str(uid)).name


def _bits_stored(ds):
    try:
        return int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    except (TypeError, ValueError):
        return 8


def usable_options(uid, bits_stored):
    """The table's options for ``uid`` that can decode samples of ``bits_stored`` bits."""
    entry = TRANSFER_SYNTAX_DECODERS.get(uid)
    if entry is None:
        return ()
    return tuple(
        option
        for option in entry.options
        if option.max_bits_stored is None or bits_stored <= option.max_bits_stored
    )


def install_hint(uid, bits_stored=8):
    """Human hint naming the ``pip install`` commands that would decode ``uid``."""
    pips = list(dict.fromkeys(o.pip for o in usable_options(uid, bits_stored)))
    if not pips:
        return (
            "no Python package known to pydicom decodes it; "
            "convert the file to an uncompressed transfer syntax first"
        )
    return "install a decoder: " + " or ".join(f"'pip install {p}'" for p in pips)


def _codec_missing(uid, bits_stored):
    precision = f" with {bits_stored}-bit samples" if bits_stored > 8 else ""
    return DicomDecodeError(
        f"cannot decode '{syntax_name(uid)}' pixel data{precision}: no installed decoder handles it; "
        f"{install_hint(uid, bits_stored)}",
        code="codec_missing",
    )


def check_decodable(ds):
    """Check, without decoding, that an installed pydicom plugin can decode the pixel data.

    Args:
        ds (`pydicom.Dataset`): dataset with file meta and the Image Pixel module.

    Returns:
        `tuple[str, ...]`: the usable plugin labels (empty for native transfer syntaxes,
        which pydicom decodes itself).

    Raises:
        DicomDecodeError: code ``"codec_missing"`` naming the transfer syntax and the
            ``pip install`` that would decode it.
    """
    uid = transfer_syntax(ds)
    bits = _bits_stored(ds)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise _codec_missing(uid, bits) from None
    if decoder.is_native:
        return ()
    available = set(decoder.available_plugins)
    entry = TRANSFER_SYNTAX_DECODERS.get(uid)
    if entry is None:
        usable = tuple(sorted(available))
    else:
        plugins = (option.plugin for option in usable_options(uid, bits))
        usable = tuple(dict.fromkeys(p for p in plugins if p in available))
    if not usable:
        raise _codec_missing(uid, bits)
    return usable


_SIZE_PATTERN = re.compile(r"\((\d+) vs (\d+) bytes\)")
_PLUGIN_LINE = re.compile(r"^\s+([A-Za-z0-9_-]+): ", re.MULTILINE)


def translate_decode_error(exc, ds):
    """Turn an exception raised while decoding into a :class:`DicomDecodeError`.

    Only the exception's category, byte counts and plugin names are kept: decoder
    messages are not forwarded verbatim so that no header value can reach a log.

    Args:
        exc (`BaseException`): what pydicom, a plugin or numpy raised.
        ds (`pydicom.Dataset`): the dataset being decoded (for its transfer syntax).

    Returns:
        `DicomDecodeError`: code ``"truncated"``, ``"codec_missing"``, ``"too_large"`` or
        ``"decode_failed"``; raise it ``from None``. Product errors are returned unchanged.
    """
    if isinstance(exc, DicomError):
        return exc
    try:
        uid = transfer_syntax(ds)
    except DicomDecodeError as missing:
        return missing
    name = syntax_name(uid)
    text = str(exc)
    logger.debug("decoding %s pixel data raised %s", name, type(exc).__name__)
    if isinstance(exc, MemoryError):
        return DicomDecodeError(f"cannot decode '{name}' pixel data: out of memory", code="too_large")
    if "less than expected" in text or "truncated" in text.lower() or isinstance(exc, EOFError):
        sizes = _SIZE_PATTERN.search(text)
        detail = f" ({sizes.group(1)} of {sizes.group(2)} bytes present)" if sizes else ""
        return DicomDecodeError(
            f"cannot decode '{name}' pixel data: (7FE0,0010) Pixel Data is truncated{detail}; "
            "the file is incomplete or its (0028,xxxx) image attributes are wrong",
            code="truncated",
        )
    if "missing dependencies" in text:
        return _codec_missing(uid, _bits_stored(ds))
    if "raised by all available plugins" in text:
        plugins = ", ".join(_PLUGIN_LINE.findall(text)) or "all plugins"
        return DicomDecodeError(
            f"cannot decode '{name}' pixel data: every installed decoder failed ({plugins}); "
            "the data may be corrupt or use an unsupported variant; "
            f"{install_hint(uid, _bits_stored(ds))}",
            code="decode_failed",
        )
    return DicomDecodeError(
        f"cannot decode '{name}' pixel data: {type(exc).__name__} while decoding; "
        "the data may be corrupt or disagree with (0028,0010) Rows / (0028,0011) Columns / "
        "(0028,0100) Bits Allocated",
        code="decode_failed",
    )
