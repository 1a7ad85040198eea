"""The book's own file: ``torch.save`` of its ``state_dict``, as chapter 5 and 7 write it, and the config that
``scratchbot`` keeps beside it as ``<name>.json`` (the book's GPT_CONFIG), since the file records none.

Read with or without the ``att.mask`` buffers, with or without the ``_orig_mod.``/``module.`` prefixes, bare or
inside chapter 5's ``{"model_state_dict": ...}``; written with the mask buffers the book's strict
``load_state_dict`` wants. Pickles load only through ``torch.load(weights_only=True)``: nothing in a file runs code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from llm.checkpoints.common import CheckpointError
from llm.config import GPTConfig, infer_config

log = logging.getLogger(__name__)

# The book's GPT_CONFIG, as chapter 4 spells it: what `<name>.json` beside a book `.pth` holds.
BOOK_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")

MASK_BUFFER = re.compile(r"^trf_blocks\.\d+\.att\.mask$")  # the book's constant causal mask; we never keep it
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")  # book ch. 5, Lightning, nanoGPT training checkpoints


def book_config_path(path: str | os.PathLike[str]) -> Path:
    """Where the config of a book ``.pth`` lives: beside it, ``<name>.json`` (the book's GPT_CONFIG keys)."""
    return Path(path).with_suffix(".json")


def book_config_json(config: GPTConfig) -> str:
    """What `<name>.json` holds: the book's GPT_CONFIG, so its own code can build the model from it too."""
    return json.dumps({k: config.to_dict()[k] for k in BOOK_CONFIG_KEYS}, indent=2) + "\n"


def read_pickle(file: Path, *, mmap: bool) -> Any:
    """``torch.load`` that never runs code from the file; memory-mapped where the format allows (zip only)."""
    try:
        if file.name.endswith(".safetensors"):  # torch.load would hand such a path to safetensors, by its name
            with open(file, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        wants = re.search(r"GLOBAL (\S+)", str(e))
        detail = f"it asks for {wants.group(1)}" if wants else "it is not a plain tensor pickle"
        raise CheckpointError(
            f"refused to load {file}: {detail}, and unpickling it could run arbitrary code; where you trust it, "
            "re-save only the weights (torch.save(model.state_dict(), ...)) or convert it to safetensors"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{file} is a corrupt or truncated PyTorch file ({first_line}); copy it again") from e


def unwrap(obj: Any, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, wherever a training checkpoint keeps it, with wrapper prefixes removed."""
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{file} holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; not a state dict")
        tensors[strip_wrappers(str(key))] = value
    if len(tensors) != len(obj):
        raise CheckpointError(f"{file} has names that collide once '_orig_mod.'/'module.' are removed")
    return tensors


def strip_wrappers(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def head_count(value: object, source: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: the head count {value!r} is not a positive whole number; fix the file")
    return value


def book_config(book: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], file: Path) -> GPTConfig:
    """The config a ``<name>.json`` gives, checked against the tensors it describes."""
    try:
        from_tensors = infer_config(state_dict, head_count(book["n_heads"], file))
        config = GPTConfig.from_dict({**from_tensors.to_dict(), **{k: book[k] for k in BOOK_CONFIG_KEYS if k in book}})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}") from e
    differs = [
        f"{k} {getattr(config, k)} (the tensors have {getattr(from_tensors, k)})"
        for k in ("vocab_size", "context_length", "emb_dim", "n_layers", "qkv_bias")
        if getattr(config, k) != getattr(from_tensors, k)
    ]
    if differs:
        raise CheckpointError(f"{file} does not describe {file.with_suffix('').name}'s tensors: {', '.join(differs)}")
    return config


def with_book_masks(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The book's ``att.mask`` buffer after each block's attention tensors, where its own state_dict has it."""
    ctx = config.context_length
    mask = torch.triu(torch.ones(ctx, ctx), diagonal=1)  # (ctx, ctx); one storage, shared by every block
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        out[name] = tensor
        if name.endswith(".att.out_proj.bias"):
            out[name.removesuffix("out_proj.bias") + "mask"] = mask
    return out
