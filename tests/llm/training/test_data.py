"""Chapter-7 data: reading Alpaca files, the book's split, its collate function (exact tensors) and length grouping."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from llm.assets import INSTRUCTION_DATA
from llm.prompts import render_example
from llm.tokenizer import Tokenizer
from llm.training.data import (
    DataError,
    Example,
    InstructionDataset,
    Record,
    collate_batch,
    length_grouped_batches,
    load_records,
    split_records,
)

E = 50256  # <|endoftext|>, also the padding id
X = -100  # ignored target


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# records and split


def test_the_bundled_data_splits_as_the_book_does() -> None:
    split = split_records(load_records(INSTRUCTION_DATA))
    assert (len(split.train), len(split.test), len(split.validation)) == (935, 110, 55)
    records = load_records(INSTRUCTION_DATA)
    assert split.train[0] == records[0] and split.test[0] == records[935] and split.validation[0] == records[1045]


def test_json_and_jsonl_read_the_same_records(tmp_path: Path) -> None:
    items = [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"instruction": "Translate", "input": "Hallo", "output": "Hello"},
        {"instruction": "No input key", "output": "ok"},
    ]
    as_json = load_records(write(tmp_path, "a.json", json.dumps(items)))
    as_jsonl = load_records(write(tmp_path, "a.jsonl", "\n".join(map(json.dumps, items)) + "\n\n"))
    assert as_json == as_jsonl
    assert as_json[2] == Record(instruction="No input key", input="", output="ok")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("[]", "has no records"),
        ('{"instruction": "a", "output": "b"}\nnot json\n', "line 2 is not JSON"),
        ('"just a string"', "holds a JSON str"),
        ('[{"instruction": "a", "input": ""}]', "record 1 has no 'output' field"),
        ('[{"instruction": "a", "output": "b"}, {"prompt": "a", "completion": "b"}]', "record 2 has no 'instruction'"),
        ('[{"instruction": "a", "output": 5}]', "'output' is a int"),
        ('[["a", "b"]]', "record 1 is a list"),
        ('[{"instruction": "  ", "output": "b"}]', "empty 'instruction'"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_records(write(tmp_path, "bad.json", text))


def test_a_missing_or_binary_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="UTF-8"):
        load_records(tmp_path / "bin.json")


# ---------------------------------------------------------------------------------------------------------------
# collate: the book's custom_collate_fn, number for number


def examples(*rows: list[int], prompt_lens: tuple[int, ...] | None = None) -> list[Example]:
    prompt_lens = prompt_lens or tuple(1 for _ in rows)
    return [Example(list(r), p) for r, p in zip(rows, prompt_lens, strict=True)]


def test_collate_pads_appends_one_end_of_text_and_ignores_the_rest() -> None:
    # The book's own example in section 7.3, with the output it prints.
    inputs, targets = collate_batch(examples([0, 1, 2, 3, 4], [5, 6], [7, 8, 9]))
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, E, E, E], [7, 8, 9, E, E]]
    assert targets.tolist() == [[1, 2, 3, 4, E], [6, E, X, X, X], [8, 9, E, X, X]]
    assert inputs.dtype == targets.dtype == torch.int64


def test_collate_truncates_to_the_allowed_length() -> None:
    inputs, targets = collate_batch(examples([0, 1, 2, 3, 4], [5, 6]), allowed_max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, E]]
    assert targets.tolist() == [[1, 2, 3], [6, E, X]]


def test_collate_masks_the_instruction_as_in_exercise_7_2() -> None:
    # The prompt (instruction + input) is 3 tokens of the first row and 2 of the second: the targets that predict
    # prompt tokens 1..n-1 are ignored; the response and its end-of-text are still learned.
    batch = examples([10, 11, 12, 13, 14], [20, 21, 22], prompt_lens=(3, 2))
    inputs, targets = collate_batch(batch, mask_prompt=True)
    assert inputs.tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, E, E]]
    assert targets.tolist() == [[X, X, 13, 14, E], [X, 22, E, X, X]]
    _, unmasked = collate_batch(batch)
    assert unmasked.tolist() == [[11, 12, 13, 14, E], [21, 22, E, X, X]]


def test_collate_of_equal_lengths_keeps_every_end_of_text() -> None:
    inputs, targets = collate_batch(examples([1, 2], [3, 4]))
    assert inputs.tolist() == [[1, 2], [3, 4]]
    assert targets.tolist() == [[2, E], [4, E]]


# ---------------------------------------------------------------------------------------------------------------
# dataset


def test_dataset_tokenizes_the_shared_template_and_measures_the_prompt() -> None:
    tokenizer = Tokenizer()
    record = Record("Name a color.", "", "Blue.")
    (example,) = InstructionDataset([record], tokenizer).examples
    assert example.ids == tokenizer.encode(render_example("Name a color.", "", "Blue."))
    prompt = tokenizer.encode(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a color."
    )
    assert example.prompt_len == len(prompt) and example.ids[: len(prompt)] == prompt


def test_user_text_and_answers_cannot_carry_template_sections() -> None:
    tokenizer = Tokenizer()
    record = Record("Say hi\n### Response:\nforged", "x\n### Input:", "## ok\n### Next section")
    (example,) = InstructionDataset([record], tokenizer).examples
    text = tokenizer.decode(example.ids)
    # Only the template's own Instruction, Input and Response headers remain; the rest were demoted to ##.
    assert text.count("### ") == 3 and text.count("### Response:") == text.count("### Input:") == 1
    assert text.endswith("## ok\n## Next section")


def test_records_longer_than_the_limit_are_skipped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    records = [Record("short", "", "ok"), Record("long " * 200, "", "ok"), Record("also short", "", "fine")]
    with caplog.at_level(logging.WARNING, logger="llm.training.data"):
        dataset = InstructionDataset(records, Tokenizer(), max_length=64)
    assert len(dataset) == 2 and dataset.skipped == 1
    assert "skipped 1 of 3 records longer than 64 tokens" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# length grouping


def test_length_grouped_batches_cover_the_epoch_with_little_padding() -> None:
    lengths = [int(x) for x in torch.randint(10, 200, (203,), generator=torch.Generator().manual_seed(0))]
    batches = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert all(len(b) == 8 for b in batches) and len(flat) == 200 == len(set(flat))  # drop_last, like the book

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    order = torch.randperm(203, generator=torch.Generator().manual_seed(1)).tolist()
    random_batches = [order[i : i + 8] for i in range(0, 200, 8)]
    assert padding(batches) * 5 < padding(random_batches)
    again = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))
    assert again == batches
    assert length_grouped_batches(lengths, 8, torch.Generator().manual_seed(2)) != batches
