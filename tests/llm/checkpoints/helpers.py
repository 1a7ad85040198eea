"""What the checkpoint tests share: a small model of a shape no GPT-2 size has, and ways to look at files."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.model import GPTModel
from tests.llm.book_reference import BookGPTModel
from tests.llm.conftest import make_model

CONFIG = GPTConfig(vocab_size=97, context_length=16, emb_dim=128, n_heads=2, n_layers=2)
# A bare state dict (torch.save of model.state_dict(), as the book's own code writes) records no config: the head count
# is given, as a user does with --n-heads.
HEADS = CONFIG.n_heads


def random_model(config: GPTConfig = CONFIG, seed: int = 0, *, tied: bool = False) -> GPTModel:
    """Random weights with no trivial tensor (see `make_model`); ``tied``: the head equals the token embedding."""
    model = make_model(config, seed)
    if tied:
        with torch.no_grad():
            model.out_head.weight.copy_(model.tok_emb.weight)
    return model


def book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """The state dict the book's own code saves for these weights: ours plus an ``att.mask`` buffer per block."""
    book = BookGPTModel(model.config.to_dict())
    missing, unexpected = book.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".att.mask") for k in missing)
    return book.state_dict()


def assert_same_tensors(expected: Mapping[str, torch.Tensor], actual: Mapping[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor), name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hf_state_dict(model: GPTModel, tmp_path: Path) -> dict[str, torch.Tensor]:
    path = save_checkpoint(model, tmp_path / "export", "hf")
    return load_safetensors(path / "model.safetensors")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)
