"""GPT-2's tokenizer as the Hugging Face files that belong beside an exported model, so that transformers, vLLM and
the other engines that read a Hugging Face directory load it as it is.

The project ships tiktoken's ranks (token bytes -> id), not ``vocab.json`` and ``merges.txt``, so both are derived:
the vocabulary is the ranks with each byte written as GPT-2's printable stand-in character (`byte_characters`), and
the merges are recovered from the ranks. A token of rank r was made by the merge that byte-pair encoding with the
ranks below r leaves as two parts; merges in rank order are exactly GPT-2's ``merges.txt``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from llm.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, mergeable_ranks

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


@lru_cache(maxsize=1)
def byte_characters() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (its ``bytes_to_unicode``): printable Latin-1 bytes stand for
    themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges, in rank order, that byte-pair encoding with ``ranks`` performs."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _encode(token, ranks, below=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _encode(token: bytes, ranks: dict[bytes, int], *, below: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        pairs = [(ranks.get(parts[i] + parts[i + 1], below), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank >= below:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def tokenizer_files(context_length: int) -> dict[str, str]:
    """Each file's name and text, for a GPT-2 model with ``context_length`` positions."""
    chars = byte_characters()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    ranks = mergeable_ranks()
    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    vocab[END_OF_TEXT] = END_OF_TEXT_ID
    merges = "".join(f"{text(a)} {text(b)}\n" for a, b in recover_merges(ranks))
    special = {"bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        **special,
        "add_prefix_space": False,
        "add_bos_token": False,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    generation = {"bos_token_id": END_OF_TEXT_ID, "eos_token_id": END_OF_TEXT_ID}
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + merges,
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
    }


def write_tokenizer_files(directory: Path, context_length: int, write: Callable[[Path, str], None]) -> None:
    """Write the files into ``directory`` with ``write(path, text)`` (the caller's atomic writer)."""
    for name, text in tokenizer_files(context_length).items():
        write(directory / name, text)
