"""The offline GPT-2 tokenizer: tiktoken's `gpt2` ids, no network, user text never becomes a control token."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from llm import tokenizer as tokenizer_module
from llm.tokenizer import StreamDecoder, Tokenizer, TokenizerAssetError

# Known GPT-2 ids (from tiktoken's `gpt2` encoding and the book's chapter 2).
KNOWN_IDS = [
    ("Hello, world", [15496, 11, 995]),
    ("Every effort moves you", [6109, 3626, 6100, 345]),
    ("Akwirw ier", [33901, 86, 343, 86, 220, 959]),
    (
        "Hello, do you like tea? In the sunlit terraces of someunknownPlace.",
        [15496, 11, 466, 345, 588, 8887, 30, 554, 262, 4252, 18250, 8812, 2114, 286, 617, 34680, 27271, 13],
    ),
]

VARIED_TEXTS = [
    "",
    " ",
    "\n\n\t  \r\n",
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it? I'll've",
    "Emoji: 👋🏽🧑‍🚀🇫🇷 and ZWJ sequences",
    "中文、日本語のテキスト、한국어",
    "مرحبا بالعالم — עברית",
    "Mixed\u00a0spaces\u2009and\u200bzero-width",
    "```python\ndef f(x):\n    return x ** 2\n```",
    "<|endoftext|> typed by a user <|endoftext|>",
    "\x00\x01 control \x7f characters",
    "a" * 5000,
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.mark.parametrize("text,ids", KNOWN_IDS)
def test_known_gpt2_ids(tok: Tokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_vocabulary_is_gpt2s(tok: Tokenizer) -> None:
    assert tok.vocab_size == 50257
    assert tok.eot_id == 50256
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"


def test_end_of_text_typed_by_a_user_is_plain_text(tok: Tokenizer) -> None:
    ids = tok.encode("hi <|endoftext|> there")
    assert 50256 not in ids
    assert tok.decode(ids) == "hi <|endoftext|> there"


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_any_text_round_trips(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_random_unicode_round_trips(tok: Tokenizer) -> None:
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(32, 0x3000) if not 0xD800 <= c <= 0xDFFF] + ["😀", "🎉", "\n", " "]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        assert tok.decode(tok.encode(text)) == text


def test_stream_decoder_never_splits_a_character(tok: Tokenizer) -> None:
    text = "héllo 👋🏽🧑‍🚀 世界 مرحبا"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    decoder = StreamDecoder(tok)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stream_decoder_flushes_an_unfinished_character_as_replacement(tok: Tokenizer) -> None:
    ids = tok.encode("👋")
    decoder = StreamDecoder(tok)
    partial = "".join(decoder.push(i) for i in ids[:-1])
    assert partial == ""
    assert decoder.flush() == "\ufffd" * len(tok.decode_bytes(ids[:-1]).decode("utf-8", "replace"))


def test_altered_tokenizer_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "gpt2.tiktoken"
    shutil.copy(tokenizer_module.ASSET, bad)
    with bad.open("ab") as f:
        f.write(b"QUFB 50257\n")
    monkeypatch.setattr(tokenizer_module, "ASSET", bad)
    tokenizer_module._encoding.cache_clear()
    try:
        with pytest.raises(TokenizerAssetError, match="reinstall scratchbot"):
            Tokenizer()
        monkeypatch.setattr(tokenizer_module, "ASSET", tmp_path / "missing.tiktoken")
        with pytest.raises(TokenizerAssetError, match="missing"):
            Tokenizer()
    finally:
        tokenizer_module._encoding.cache_clear()


def test_the_shipped_file_is_used_and_nothing_is_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tiktoken.get_encoding must never be called: it downloads files")

    monkeypatch.setattr(tiktoken, "get_encoding", no_download)
    tokenizer_module._encoding.cache_clear()
    assert Tokenizer().encode("Hello, world") == [15496, 11, 995]
