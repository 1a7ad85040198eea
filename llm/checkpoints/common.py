"""What every checkpoint module shares: the error, the loaded result, the metadata keys this project writes, and
the one check of a state dict against a model built from its config."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm.config import GPTConfig
from llm.model import GPTModel

log = logging.getLogger(__name__)

FORMATS = ("book", "safetensors", "hf")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in the order a directory is searched

# Metadata of the files this project writes (safetensors metadata is str -> str).
LAYOUT_KEY, LAYOUT = "scratchbot.layout", "gpt-book-names/1"  # the book's tensor names, version 1
CONFIG_KEY = "scratchbot.config"  # GPTConfig as JSON
SOURCE_SHA256_KEY = "scratchbot.source_sha256"  # sha256 of the file a conversion read
SOURCE_FORMAT_KEY = "scratchbot.source_format"

_HASH_CHUNK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint cannot be used as it is; the one-line message says what is wrong and what to do."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: GPTModel  # in eval mode, on the requested device and dtype
    config: GPTConfig
    format: str  # "book" | "safetensors" | "hf"
    sha256: str  # of the weights file that was read (inside the directory for a Hugging Face directory)
    path: Path  # as given
    metadata: dict[str, str] = field(default_factory=dict)  # the file's own metadata (safetensors header)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_tensors(
    state_dict: Mapping[str, torch.Tensor],
    config: GPTConfig,
    source: object,
    origin: Mapping[str, str] | None = None,
) -> None:
    """Every tensor a `GPTModel` of ``config`` needs is present with its exact shape, and nothing else.

    ``source`` names the file in messages; ``origin`` maps a tensor to the name it had in the file, if another.
    """
    origin = origin or {}
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in GPTModel(config).state_dict().items()}
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} tensor(s) of a {describe_config(config)}, first {missing[0]}; "
            "the file is incomplete or not the book's GPT-2 architecture"
        )
    unexpected = [k for k in state_dict if k not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} tensor(s) a {describe_config(config)} does not use, first "
            f"{unexpected[0]!r}; it is not the book's GPT-2 architecture"
        )
    for name, shape in wanted.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            came_from = f" (converted from {origin[name]})" if name in origin else ""
            raise CheckpointError(
                f"{source}: tensor {name}{came_from} has shape {got} but a {describe_config(config)} needs {shape}; "
                "the file is inconsistent (edited, cut short, or another architecture)"
            )


def config_json(config: GPTConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def describe_config(config: GPTConfig) -> str:
    size = config.preset_name() or "GPT"
    return (
        f"{size} model (vocab {config.vocab_size}, context {config.context_length}, width {config.emb_dim}, "
        f"{config.n_layers} layers, {config.n_heads} heads)"
    )
