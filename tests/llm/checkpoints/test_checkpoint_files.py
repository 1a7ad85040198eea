"""`checkpoint_files` names every file a load reads, so that confining loads to a directory can check them all (see
`bot.core.checkpoint_names`). Each layout is loaded for real while Python's audit hook records what is opened."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llm.checkpoints.load import checkpoint_files, load_checkpoint
from llm.checkpoints.save import save_checkpoint
from tests.llm.checkpoints.helpers import hf_state_dict, random_model

_opened: list[Path] | None = None  # while a test records: the files opened from Python, in order


def _record_opens(event: str, args: tuple[object, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | Path):
        _opened.append(Path(args[0]))


sys.addaudithook(_record_opens)  # hooks cannot be removed; it records nothing outside `opened_while`


def opened_while(load: Callable[[], object], under: Path) -> set[Path]:
    global _opened
    _opened = []
    try:
        load()
        return {p.resolve() for p in _opened if p.resolve().is_relative_to(under.resolve())}
    finally:
        _opened = None


def hf_directory(tmp_path: Path) -> Path:
    return save_checkpoint(random_model(), tmp_path / "hf", "hf")  # config.json + model.safetensors


def hf_bin_directory(tmp_path: Path) -> Path:
    directory = hf_directory(tmp_path)
    torch.save(hf_state_dict(random_model(), tmp_path), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    return directory


def book_file(tmp_path: Path) -> Path:
    return save_checkpoint(random_model(), tmp_path / "book.pth", "book")  # and book.json beside it


def plain_safetensors_with_a_sidecar(tmp_path: Path) -> Path:
    save_file(random_model().state_dict(), tmp_path / "plain.safetensors")  # no config inside: book.json says
    (tmp_path / "plain.json").write_text(json.dumps({"n_heads": 2}))
    return tmp_path / "plain.safetensors"


def hf_weights_file_with_config_beside(tmp_path: Path) -> Path:
    directory = hf_directory(tmp_path)
    return directory / "model.safetensors"


LAYOUTS = [
    hf_directory,
    hf_bin_directory,
    book_file,
    plain_safetensors_with_a_sidecar,
    hf_weights_file_with_config_beside,
]


@pytest.mark.parametrize("make", LAYOUTS, ids=[f.__name__ for f in LAYOUTS])
def test_every_file_a_load_opens_is_named(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path)
    opened = opened_while(lambda: load_checkpoint(path), tmp_path)
    assert len(opened) >= 2  # the weights and a config: the hook did see the load read
    named = {p.resolve() for p in checkpoint_files(path)}
    assert opened <= named, f"read but not named: {sorted(opened - named)}"
