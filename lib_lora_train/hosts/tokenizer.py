"""CLIP byte-level BPE vocabularies, built locally: the real 49408-token one and the tiny embedded one.

Stable Diffusion checkpoints carry no tokenizer, and the usual source (the model hub) is
off limits in a hospital. The real vocabulary is rebuilt from OpenAI's merge list, which the
MIT-licensed ``clip-anytorch`` wheel ships as ``clip/bpe_simple_vocab_16e6.txt.gz``, with
OpenAI's ``SimpleTokenizer`` construction, so ids match ``openai/clip-vit-large-patch14``
(``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407). The embedded model gets a small,
deterministic vocabulary of the same shape: 256 byte symbols, the same with ``</w>``, merges
that spell common caption words, then the two special tokens.
"""

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import pathlib

from .cache import ensure_cached_folder
from .components import ModelLoadError

logger = logging.getLogger(__name__)

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
# OpenAI's file, as shipped by clip-anytorch 2.x and open_clip.
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_INSTALL_HINT = "pip install --no-deps clip-anytorch"
_TOKENIZER_OVERRIDES = ("model_max_length", "bos_token", "eos_token", "unk_token", "pad_token")

# Words spelled by the tiny vocabulary's merges, so captions are not tokenised per character.
CAPTION_WORDS = (
    "a", "an", "the", "of", "and", "with", "in", "on", "at", "no", "ct", "mr", "mri", "pet", "scan",
    "chest", "lung", "lungs", "axial", "coronal", "sagittal", "window", "style", "slice", "brain",
    "head", "neck", "abdomen", "pelvis", "spine", "liver", "kidney", "heart", "bone", "soft",
    "tissue", "mediastinal", "pulmonary", "nodule", "contrast", "image", "photo", "medical",
    "normal", "view", "radiograph", "xray", "ray", "knee", "hand", "t1", "t2", "flair", "weighted",
)


def bytes_to_unicode():
    """OpenAI CLIP's reversible map from the 256 byte values to printable unicode symbols.

    Returns:
        `dict[int, str]`: byte value -> symbol, in OpenAI's order (which fixes the first 256 ids).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    byte_values = printable[:]
    code_points = printable[:]
    extra = 0
    for value in range(256):
        if value not in byte_values:
            byte_values.append(value)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(point) for point in code_points)))


def _vocab_from_merges(merges):
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    seen = set(tokens)
    for left, right in merges:
        if left + right not in seen:
            tokens.append(left + right)
            seen.add(left + right)
    tokens.extend([START_TOKEN, END_TOKEN])
    return {token: index for index, token in enumerate(tokens)}


def build_clip_bpe(bpe_gz_path):
    """OpenAI ``SimpleTokenizer``'s vocabulary and merges from ``bpe_simple_vocab_16e6.txt.gz``.

    Args:
        bpe_gz_path (`str` or `os.PathLike`): the gzipped merge list.

    Returns:
        `tuple[dict[str, int], list[tuple[str, str]]]`: 49408-entry vocabulary and 48894 merges.
    """
    with gzip.open(bpe_gz_path) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    # As in SimpleTokenizer: skip the header line, keep 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    vocab = _vocab_from_merges(merges)
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ModelLoadError(f"{CLIP_BPE_FILE} gives {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}; "
                             f"reinstall it with `{CLIP_INSTALL_HINT}`")
    return vocab, merges


def _word_merges(word):
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    merges, current = [], symbols[0]
    for symbol in symbols[1:]:
        merges.append((current, symbol))
        current += symbol
    return merges


def build_tiny_bpe(words=CAPTION_WORDS):
    """A small deterministic byte-level BPE vocabulary whose merges spell ``words`` left to right.

    Args:
        words (`Iterable[str]`): lower-case ASCII words to make into single tokens.

    Returns:
        `tuple[dict[str, int], list[tuple[str, str]]]`: vocabulary (specials last) and merges.
    """
    merges, seen = [], set()
    for word in words:
        for pair in _word_merges(word):
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
    return _vocab_from_merges(merges), merges


def write_bpe_files(folder, vocab, merges):
    """Write ``vocab.json`` and ``merges.txt`` in the layout of Hugging Face CLIP tokenizers.

    Args:
        folder (`pathlib.Path`): destination folder (created).
        vocab (`dict[str, int]`), merges (`list[tuple[str, str]]`)
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    body = "".join(f"{left} {right}\n" for left, right in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + body, encoding="utf-8")


def find_clip_bpe_file():
    """Locate OpenAI's merge list in the installed ``clip-anytorch`` wheel and check its hash.

    Returns:
        `pathlib.Path`

    Raises:
        `ModelLoadError`: the package is missing, or the file is not OpenAI's.
    """
    candidates = []
    try:
        candidates.append(pathlib.Path(importlib.metadata.distribution("clip-anytorch").locate_file(f"clip/{CLIP_BPE_FILE}")))
    except importlib.metadata.PackageNotFoundError:
        pass
    # find_spec locates the package without importing it (its __init__ imports torchvision).
    spec = importlib.util.find_spec("clip")
    if spec is not None and spec.origin:
        candidates.append(pathlib.Path(spec.origin).parent / CLIP_BPE_FILE)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise ModelLoadError("the CLIP tokenizer vocabulary needed for Stable Diffusion checkpoints is not installed; "
                             f"install it with `{CLIP_INSTALL_HINT}` (no model download needed)")
    if hashlib.sha256(found.read_bytes()).hexdigest() != CLIP_BPE_SHA256:
        raise ModelLoadError(f"{CLIP_BPE_FILE} in the installed `clip` package is not OpenAI's file; "
                             f"reinstall it with `{CLIP_INSTALL_HINT}`")
    return found


def ensure_clip_vocab_folder(cache_dir):
    """A cached folder with the real CLIP ``vocab.json`` and ``merges.txt``, built on first use.

    Args:
        cache_dir (`pathlib.Path`): the model cache of the data home.

    Returns:
        `pathlib.Path`

    Raises:
        `ModelLoadError`: ``clip-anytorch`` is missing or its file is not OpenAI's.
    """
    bpe_file = find_clip_bpe_file()

    def build(folder):
        write_bpe_files(folder, *build_clip_bpe(bpe_file))

    folder, _, built = ensure_cached_folder(pathlib.Path(cache_dir) / "clip-vocab-v1", "clip-vocab", build,
                                            {"bpe_sha256": CLIP_BPE_SHA256})
    if built:
        logger.info("built the CLIP tokenizer vocabulary from %s", CLIP_BPE_FILE)
    return folder


def write_tiny_tokenizer_folder(folder, tokenizer_config):
    """Write the embedded model's tokenizer: tiny vocabulary, merges and ``tokenizer_config.json``.

    Args:
        folder (`pathlib.Path`): destination (created).
        tokenizer_config (`dict`): written as ``tokenizer_config.json``.

    Returns:
        `int`: the vocabulary size, which the tiny text encoder must match.
    """
    vocab, merges = build_tiny_bpe()
    write_bpe_files(folder, vocab, merges)
    (pathlib.Path(folder) / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True),
                                                                encoding="utf-8")
    return len(vocab)


def load_clip_tokenizer(folder, tokenizer_config=None):
    """Load a ``CLIPTokenizer`` from a local folder; never touches the network.

    Args:
        folder (`pathlib.Path`): holds ``vocab.json`` and ``merges.txt``.
        tokenizer_config (`dict`, *optional*): a shipped ``tokenizer_config.json``; its special
            tokens and ``model_max_length`` override the folder's (SD 1.x pads with
            ``<|endoftext|>``, SD 2.x with ``!``).

    Returns:
        `transformers.CLIPTokenizer`
    """
    from transformers import CLIPTokenizer

    overrides = {key: value for key, value in (tokenizer_config or {}).items() if key in _TOKENIZER_OVERRIDES}
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, **overrides)
