"""Instruction data as chapter 7 prepares it: Alpaca records -> the book's split -> token ids -> padded batches.

The collate function is the book's ``custom_collate_fn``, number for number: one ``<|endoftext|>`` appended, padding
with the same id to the longest sequence of the batch, inputs = seq[:-1], targets = seq[1:], every padding target but
the first replaced by -100 (so the model learns to end its answer, and nothing else about padding), optional
truncation; and, with ``mask_prompt``, the solution of the book's exercise 7.2 (targets of the instruction/input
tokens set to -100 too). `length_grouped_batches` is the fast path's sampler: batches of similar length, so little
compute goes to padding, in a shuffled order.

Training text goes through the same `llm.prompts` functions as serving. The instruction and input are neutralised
there (a line-leading ``###`` becomes ``##``), as they are for a user's message at serving time, so the model never
learns a form of user text it will not see. The output is neutralised here as well: an answer that opened a ``###``
heading would be cut at that line by the serving stop strings, so the model should learn to write ``##`` instead.
For the chapter-7 records neither changes a single character.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from llm.prompts import format_input, neutralize, render_example
from llm.tokenizer import END_OF_TEXT_ID, Tokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # PyTorch cross_entropy's default ignore_index, as the book uses it
TRAIN_FRACTION = 0.85  # the book's split, in file order
TEST_FRACTION = 0.10  # the rest after train and test is validation
FORMAT_HINT = 'a JSON array of {"instruction": ..., "input": ..., "output": ...} objects, or one such object per line'


class DataError(ValueError):
    """Training data that cannot be used; the message names the file, the record and what to fix."""


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str  # may be empty: then the template has no Input section
    output: str


@dataclass(frozen=True)
class Split:
    train: list[Record]
    test: list[Record]
    validation: list[Record]


@dataclass(frozen=True)
class Example:
    ids: list[int]  # tokens of the whole rendered example (prompt + response header + output), no end-of-text
    prompt_len: int  # tokens of the instruction and input part (the book's exercise 7.2 "instruction length")


# ---------------------------------------------------------------------------------------------------------------
# Records


def load_records(path: str | os.PathLike[str]) -> list[Record]:
    """Records of an Alpaca-format file: a JSON array of objects, or JSON Lines (one object per line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text ({e}); expected {FORMAT_HINT}") from e
    if not text.strip():
        raise DataError(f"data file {path} is empty; expected {FORMAT_HINT}")
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        items = _json_lines(text, path)
    if isinstance(items, dict):
        items = [items]  # a JSON Lines file with a single record
    if not isinstance(items, list):
        raise DataError(f"{path} holds a JSON {type(items).__name__}; expected {FORMAT_HINT}")
    if not items:
        raise DataError(f"{path} has no records; expected {FORMAT_HINT}")
    records = [_record(item, i, path) for i, item in enumerate(items, start=1)]
    log.info("read %d records from %s", len(records), path)
    return records


def _json_lines(text: str, path: Path) -> list[object]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number} is not JSON ({e.msg}); expected {FORMAT_HINT}") from None
    return items


def _record(item: object, number: int, path: Path) -> Record:
    if not isinstance(item, dict):
        raise DataError(f"{path} record {number} is a {type(item).__name__}, not an object; expected {FORMAT_HINT}")
    for key in ("instruction", "output"):
        if key not in item:
            raise DataError(
                f"{path} record {number} has no {key!r} field (it has {', '.join(map(repr, item)) or 'none'}); "
                "every record needs 'instruction' and 'output', and 'input' may be empty"
            )
    fields = {key: "" if item.get(key) is None else item[key] for key in ("instruction", "input", "output")}
    for key, value in fields.items():
        if not isinstance(value, str):
            raise DataError(f"{path} record {number}: {key!r} is a {type(value).__name__}; it must be text")
    if not fields["instruction"].strip():
        raise DataError(f"{path} record {number} has an empty 'instruction'; remove the record or fill it in")
    return Record(**fields)


def split_records(records: Sequence[Record]) -> Split:
    """The book's split in file order: 85% train, 10% test, the rest validation (935/110/55 of 1,100)."""
    n_train = int(len(records) * TRAIN_FRACTION)
    n_test = int(len(records) * TEST_FRACTION)
    return Split(
        train=list(records[:n_train]),
        test=list(records[n_train : n_train + n_test]),
        validation=list(records[n_train + n_test :]),
    )


# ---------------------------------------------------------------------------------------------------------------
# Tokens


class InstructionDataset(Dataset):
    """The book's ``InstructionDataset``: every record rendered with the Alpaca template and tokenized once.

    Records longer than ``max_length`` tokens are skipped (counted in ``skipped`` and logged): the book would cut
    them, and a cut answer loses its end-of-text, teaching the model to stop mid-sentence.
    """

    def __init__(self, records: Sequence[Record], tokenizer: Tokenizer, max_length: int | None = None) -> None:
        texts = [render_example(r.instruction, r.input, neutralize(r.output)) for r in records]
        prompts = [format_input(r.instruction, r.input) for r in records]
        self.examples: list[Example] = []
        self.skipped = 0
        longest = 0
        for ids, prompt_ids in zip(tokenizer.encode_batch(texts), tokenizer.encode_batch(prompts), strict=True):
            if max_length is not None and len(ids) > max_length:
                self.skipped += 1
                longest = max(longest, len(ids))
                continue
            self.examples.append(Example(ids, _shared_prefix(prompt_ids, ids)))
        if self.skipped:
            log.warning(
                "skipped %d of %d records longer than %s tokens (the longest has %d); raise --max-length or the "
                "model's context length to keep them",
                self.skipped,
                len(records),
                max_length,
                longest,
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        return [len(e.ids) for e in self.examples]


def _shared_prefix(prompt_ids: list[int], ids: list[int]) -> int:
    """The book counts the prompt's tokens encoded alone; where BPE merged across the boundary, stop there."""
    n = 0
    for a, b in zip(prompt_ids, ids, strict=False):
        if a != b:
            break
        n += 1
    return n


def collate_batch(
    batch: Sequence[Example],
    pad_token_id: int = END_OF_TEXT_ID,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = 1024,
    mask_prompt: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's ``custom_collate_fn`` (plus exercise 7.2's prompt masking): (inputs, targets), each (B, T)."""
    batch_max_length = max(len(e.ids) + 1 for e in batch)
    inputs_lst, targets_lst = [], []
    for example in batch:
        padded = [*example.ids, pad_token_id]  # the end-of-text the model must learn to produce
        padded += [pad_token_id] * (batch_max_length - len(padded))
        inputs = torch.tensor(padded[:-1])  # (T,)
        targets = torch.tensor(padded[1:])  # (T,)
        # Every padding target but the first is ignored; the first is the end-of-text above. The book finds them by
        # value, and so does this: the tokenizer never makes 50256 from text, so only the padding matches.
        indices = torch.nonzero(targets == pad_token_id).squeeze(-1)
        if indices.numel() > 1:
            targets[indices[1:]] = ignore_index
        if mask_prompt:
            # Exercise 7.2: no loss on predicting the instruction/input; the response header onwards is learned.
            targets[: example.prompt_len - 1] = ignore_index
        if allowed_max_length is not None:
            inputs = inputs[:allowed_max_length]
            targets = targets[:allowed_max_length]
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst).to(device), torch.stack(targets_lst).to(device)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool_batches: int = 16
) -> list[list[int]]:
    """One epoch of batches (lists of indices) whose members have similar lengths, in a random order.

    The indices are shuffled, cut into pools of ``pool_batches`` batches, each pool sorted by length and cut into
    batches, and the batches shuffled. Every epoch differs, each batch still draws from a random pool, and an
    incomplete last batch is dropped as the book's ``drop_last=True`` does. Only which examples share a batch
    changes; each batch's loss is the same mean token cross-entropy.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order = order[: len(order) - len(order) % batch_size]
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        members = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
