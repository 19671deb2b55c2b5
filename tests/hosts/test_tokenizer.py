"""Tests of lib_lora_train/hosts/tokenizer.py: the locally built CLIP vocabularies."""

import json

import pytest

pytest.importorskip("transformers", reason="the tokenizer is a transformers CLIPTokenizer")

from lib_lora_train.hosts.components import ModelLoadError
from lib_lora_train.hosts.tokenizer import (
    END_TOKEN,
    START_TOKEN,
    build_tiny_bpe,
    bytes_to_unicode,
    ensure_clip_vocab_folder,
    find_clip_bpe_file,
    load_clip_tokenizer,
    write_bpe_files,
)


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    try:
        find_clip_bpe_file()
    except ModelLoadError:
        pytest.skip("clip-anytorch is not installed (pip install --no-deps clip-anytorch)")
    folder = ensure_clip_vocab_folder(tmp_path_factory.mktemp("cache"))
    return load_clip_tokenizer(folder, {"model_max_length": 77, "pad_token": END_TOKEN})


def test_bytes_to_unicode_is_openais_order():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("!")] == "!" and table[ord(" ")] == "Ġ"


@pytest.mark.parametrize("text, ids", [
    ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ("", [49406, 49407]),
])
def test_real_vocabulary_ids_match_openai_clip(clip_tokenizer, text, ids):
    assert clip_tokenizer(text).input_ids == ids
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.convert_tokens_to_ids([START_TOKEN, END_TOKEN]) == [49406, 49407]


def test_real_vocabulary_pads_to_77(clip_tokenizer):
    ids = clip_tokenizer(["chest"], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[-1] == 49407


def test_tiny_vocabulary_is_deterministic_and_spells_caption_words(tmp_path):
    vocab, merges = build_tiny_bpe()
    assert (vocab, merges) == build_tiny_bpe()
    assert list(vocab)[:256] == list(bytes_to_unicode().values())
    assert list(vocab)[-2:] == [START_TOKEN, END_TOKEN]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    write_bpe_files(tmp_path, vocab, merges)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    tokenizer = load_clip_tokenizer(tmp_path)
    tokens = tokenizer.tokenize("Axial CT of the chest, lung window style")
    assert tokens == ["axial</w>", "ct</w>", "of</w>", "the</w>", "chest</w>", ",</w>", "lung</w>", "window</w>",
                      "style</w>"]
    assert all(token_id < len(vocab) for token_id in tokenizer("unknown wörds 123").input_ids)


def test_damaged_vocabulary_cache_is_rebuilt(clip_tokenizer, tmp_path):
    folder = ensure_clip_vocab_folder(tmp_path)
    (folder / "merges.txt").write_text("#version: 0.2\n")
    assert ensure_clip_vocab_folder(tmp_path) == folder
    assert len((folder / "merges.txt").read_text().splitlines()) == 48894 + 1
