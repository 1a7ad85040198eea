"""Another layout's tensor names beside the book's, as data, and the one function that applies such a table.

Hugging Face's GPT-2 (`llm.checkpoints.hf`) and OpenAI's original release (`llm.checkpoints.openai`) store the book's
numbers under other names, with two twists each: q, k and v live in one fused ``c_attn`` matrix, and the projections
are ``Conv1D`` layers whose weights are ``(in, out)`` where ``nn.Linear``'s are ``(out, in)``. A table says which
foreign name holds which book name(s) and which are transposed; applying it is splits, concatenations and transposes
only, so a round trip is exact. Shapes are checked afterwards, in one place (`llm.checkpoints.common.check_tensors`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NameTable:
    # Foreign name -> the book's name. "{n}" is the block index. A tuple is a fused tensor, split in equal parts along
    # its last (output) dimension, in this order.
    to_book: Mapping[str, str | tuple[str, ...]]
    transposed: frozenset[str]  # foreign names (with "{n}") stored (in, out): transposed on the way through
    block: re.Pattern[str]  # finds the block index in a foreign name (group 1)

    def rows(self, blocks: Iterable[int]) -> list[tuple[str, str, tuple[str, ...]]]:
        """(template, foreign name, the book name(s) it holds) with "{n}" filled in for every block."""
        blocks = sorted(blocks)
        rows = []
        for template, book in self.to_book.items():
            names = book if isinstance(book, tuple) else (book,)
            for n in blocks if "{n}" in template else [0]:
                rows.append((template, template.format(n=n), tuple(name.format(n=n) for name in names)))
        return rows

    def blocks(self, names: Iterable[str]) -> set[int]:
        return {int(m.group(1)) for name in names if (m := self.block.match(name))}


def to_book(
    table: NameTable,
    names: Iterable[str],
    read: Callable[[str, str], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str], set[str]]:
    """Tensors in the book's names from a foreign layout's: ``read(name, template)`` gives each tensor as a 2-D
    ``(in, out)`` matrix or a vector. Returns the book's tensors, book name -> the foreign name it came from, and the
    foreign names the table does not know (the caller decides what they mean)."""
    left = set(names)
    book: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for template, name, targets in table.rows(table.blocks(left)):
        if name not in left:
            continue  # reported as missing by the caller, under the book's name
        left.discard(name)
        tensor = read(name, template)
        parts = tensor.chunk(len(targets), dim=-1) if len(targets) > 1 else (tensor,)  # c_attn: 3 x (in, out)
        if template in table.transposed:
            parts = tuple(p.t() for p in parts)  # (in, out) -> (out, in)
        for target, part in zip(targets, parts, strict=True):
            book[target] = part.contiguous()
            origin[target] = name
    return book, origin, left


def from_book(table: NameTable, n_layers: int, tensor_for: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """The foreign layout's tensors from the book's (the inverse of `to_book`); ``tensor_for(book_name)`` gives each
    book tensor, so the caller can fill in what the book's model lacks."""
    out: dict[str, torch.Tensor] = {}
    for template, name, sources in table.rows(range(n_layers)):
        parts = [tensor_for(source) for source in sources]
        if template in table.transposed:
            parts = [p.t() for p in parts]  # (out, in) -> (in, out)
        out[name] = (torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]).contiguous()  # c_attn: (in, 3 * out)
    return out
