"""GPT-2's byte-level BPE through tiktoken, built offline from the ranks file shipped in ``llm/assets``.

tiktoken's named loader for "gpt2" downloads its files on first use and fails without internet, so the encoding is
assembled here from the same ranks (the file's sha256 is tiktoken's own expected hash for ``r50k_base``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import tiktoken

log = logging.getLogger(__name__)

ASSET = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
ASSET_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
# tiktoken's r50k_base split pattern (GPT-2's pre-tokenizer regex).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerAssetError(RuntimeError):
    """The shipped ranks file is missing or altered; reinstalling the package restores it."""


def _load_ranks(path: Path) -> dict[bytes, int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerAssetError(f"tokenizer file {path} is missing; reinstall scratchbot to restore it") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != ASSET_SHA256:
        raise TokenizerAssetError(
            f"tokenizer file {path} has sha256 {digest}, expected {ASSET_SHA256}; reinstall scratchbot to restore it"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def mergeable_ranks() -> dict[bytes, int]:
    """GPT-2's byte-pair ranks as shipped (token bytes -> id), for exporting the tokenizer in other formats."""
    return _load_ranks(ASSET)


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_load_ranks(ASSET),
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=50257,
    )


class Tokenizer:
    """Text <-> GPT-2 token ids. Text is always encoded as ordinary text: a user who types ``<|endoftext|>``
    gets the tokens of those characters, never the end-of-text id, which only `eot_id` and the prompt code use."""

    eot_id = END_OF_TEXT_ID

    def __init__(self) -> None:
        self._enc = _encoding()

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        # disallowed_special=() makes special-token text plain text instead of an error or a control token.
        return self._enc.encode(text, allowed_special=set(), disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_batch(texts, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Iterable[int]) -> str:
        # Invalid byte sequences (a character cut mid-way) become U+FFFD rather than an exception.
        return self._enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(token_id)


class StreamDecoder:
    """Turns a stream of token ids into text deltas without ever emitting half of a multi-byte character.

    GPT-2 tokens are byte sequences; one emoji may span several tokens. Bytes are held back until they form
    complete UTF-8; `flush` releases whatever is left (invalid bytes as U+FFFD) at the end of the stream.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._pending = b""

    def push(self, token_id: int) -> str:
        self._pending += self._tokenizer.token_bytes(token_id)
        return self._take(final=False)

    def flush(self) -> str:
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        data = self._pending
        if final:
            self._pending = b""
            return data.decode("utf-8", errors="replace")
        cut = _complete_utf8_prefix(data)
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 character."""
    n = len(data)
    # Walk back over at most 3 continuation bytes to the lead byte of the last character.
    i = n - 1
    while i >= 0 and n - i <= 4 and (data[i] & 0xC0) == 0x80:
        i -= 1
    if i < 0:
        return n
    lead = data[i]
    if lead < 0x80:
        return n
    needed = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return n if n - i >= needed else i
