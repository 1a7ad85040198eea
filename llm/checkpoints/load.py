"""Load, save, convert and inspect checkpoints: the book's ``.pth``, the project's safetensors, Hugging Face GPT-2.

The format comes from the file's bytes (torch zip, legacy pickle or safetensors header), then its tensor names (the
book's or Hugging Face's), never from its extension. Nothing in a file runs code: pickles load only through
``torch.load(weights_only=True)``, memory-mapped where the format allows. Every name and shape is checked against the
config before the tensors are assigned to a model built on the meta device; a bad file raises `CheckpointError`.

- ``book``: ``torch.save`` of the book's ``state_dict`` (``gpt2-medium355M-sft.pth``), written with the ``att.mask``
  buffers the book's strict ``load_state_dict`` wants; read with or without them, with or without the
  ``_orig_mod.``/``module.`` prefixes, bare or inside chapter 5's ``{"model_state_dict": ...}``. The file records no
  config, and its shapes do not tell the head count; so the book's ``GPT_CONFIG`` is written beside it as
  ``<name>.json`` and read back from there. Without that file the head count is ``n_heads``, or that of the GPT-2
  size with exactly these shapes, or the load is refused (`llm.config.infer_config`): never a guess.
- ``safetensors``: the book's names plus metadata (config as JSON, sha256 of the file it was converted from).
- ``hf``: a directory ``GPT2LMHeadModel.from_pretrained`` loads (``config.json`` + ``model.safetensors``); read also
  from ``pytorch_model.bin`` or a bare weights file. The name table is in `llm.checkpoints.hf`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from llm.checkpoints.book import MASK_BUFFER, book_config, book_config_path, head_count, read_pickle, unwrap
from llm.checkpoints.common import (
    CONFIG_KEY,
    HF_WEIGHT_FILES,
    LAYOUT,
    LAYOUT_KEY,
    CheckpointError,
    LoadedCheckpoint,
    check_tensors,
    describe_config,
    file_sha256,
)
from llm.checkpoints.hf import check_hf_config, hf_to_book, is_hf_layout
from llm.config import ConfigError, GPTConfig, UnknownHeadCountError, infer_config
from llm.model import GPTModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadCheckpoint:
    state_dict: dict[str, torch.Tensor]  # the book's names, checked against config; may be memory-mapped
    config: GPTConfig
    format: str
    metadata: dict[str, str]
    weights_file: Path


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    n_heads: int | None = None,
) -> LoadedCheckpoint:
    """A `GPTModel` in eval mode with the weights of ``path``; floating tensors cast to ``dtype`` when given."""
    read = read_checkpoint(Path(path), n_heads)
    with torch.device("meta"):
        model = GPTModel(read.config)
    placed: dict[int, torch.Tensor] = {}  # by id: a tied head and embedding stay one tensor
    for tensor in read.state_dict.values():
        if id(tensor) not in placed:
            target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            try:
                placed[id(tensor)] = tensor.to(device=device, dtype=target)
            except (RuntimeError, AssertionError) as e:  # torch raises AssertionError for a missing CUDA build
                raise CheckpointError(f"cannot place the model on device {device!r}: {e}") from e
    model.load_state_dict({k: placed[id(t)] for k, t in read.state_dict.items()}, strict=True, assign=True)
    log.info("loaded %s checkpoint %s (%s)", read.format, path, describe_config(read.config))
    return LoadedCheckpoint(
        model=model.eval(),
        config=read.config,
        format=read.format,
        sha256=file_sha256(read.weights_file),
        path=Path(path),
        metadata=read.metadata,
    )


def load_state_dict(
    path: str | os.PathLike[str], *, n_heads: int | None = None
) -> tuple[dict[str, torch.Tensor], str, dict[str, str]]:
    """The checked tensors of ``path`` in the book's names (no mask buffers), its format and its metadata."""
    read = read_checkpoint(Path(path), n_heads)
    return read.state_dict, read.format, read.metadata


def inspect_checkpoint(path: str | os.PathLike[str], *, n_heads: int | None = None) -> dict[str, Any]:
    """What ``scratchbot inspect`` prints: format, config, parameter count (as `GPTModel` counts), dtypes, sha256."""
    read = read_checkpoint(Path(path), n_heads)
    return {
        "path": str(path),
        "weights_file": str(read.weights_file),
        "format": read.format,
        "config": read.config.to_dict(),
        "preset": read.config.preset_name(),
        "parameters": sum(t.numel() for t in read.state_dict.values()),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in read.state_dict.values()}),
        "sha256": file_sha256(read.weights_file),
        "file_size": read.weights_file.stat().st_size,
        "metadata": read.metadata,
    }


def read_checkpoint(path: Path, n_heads: int | None) -> ReadCheckpoint:
    """The checked tensors of ``path`` in the book's names, with the config they were read with."""
    weights, config_json = _locate(path)
    container = _sniff(weights)
    if container == "safetensors":
        tensors, metadata = _read_safetensors(weights)
    else:
        tensors, metadata = unwrap(read_pickle(weights, mmap=container == "zip"), weights), {}
    if metadata.get(LAYOUT_KEY, LAYOUT) != LAYOUT:
        raise CheckpointError(f"{weights} has layout {metadata[LAYOUT_KEY]!r}, unknown here; upgrade scratchbot")
    saved = _config_from_metadata(metadata, weights)
    origin: dict[str, str] = {}
    recorded_heads: tuple[int, str] | None = None  # what the file (or a file beside it) says, and where
    if saved is not None:
        recorded_heads = saved.n_heads, "its metadata"
    if is_hf_layout(tensors):
        fmt = "hf"
        hf_config = _read_json(config_json) if config_json else {}
        if problems := check_hf_config(hf_config):
            raise CheckpointError(f"{config_json} describes a model unlike GPT-2: {'; '.join(problems)}")
        state_dict, origin = hf_to_book(tensors)
        heads = hf_config.get("n_head", hf_config.get("num_attention_heads"))
        if heads is not None and saved is not None and head_count(heads, config_json) != saved.n_heads:
            raise CheckpointError(
                f"{weights}: its metadata says {saved.n_heads} attention heads but {config_json} says {heads}; one of "
                "them was edited: export the model again"
            )
        if saved is None and heads is not None:
            recorded_heads = head_count(heads, config_json), str(config_json)
    elif "tok_emb.weight" in tensors:
        fmt = "safetensors" if container == "safetensors" else "book"
        state_dict = {k: v for k, v in tensors.items() if not MASK_BUFFER.match(k)}
        if saved is None and (sidecar := book_config_path(weights)).is_file():
            book = _read_json(sidecar)
            if "n_heads" not in book:
                raise CheckpointError(f"{sidecar} has no n_heads; write the book's GPT_CONFIG there (n_heads: ...)")
            recorded_heads = head_count(book["n_heads"], sidecar), str(sidecar)
            saved = book_config(book, state_dict, sidecar)
    else:
        raise CheckpointError(
            f"{weights} is not a GPT-2 checkpoint: it has neither tok_emb.weight (the book's names) nor wte.weight "
            f"(Hugging Face's); its first tensors are {', '.join(list(tensors)[:3]) or 'none'}"
        )
    if n_heads is not None and recorded_heads is not None and int(n_heads) != recorded_heads[0]:
        raise CheckpointError(
            f"{weights}: {recorded_heads[1]} says {recorded_heads[0]} attention heads, but {n_heads} were asked for; "
            "leave the head count out (the file's own is used) or fix the file"
        )
    heads = int(n_heads) if n_heads is not None else recorded_heads[0] if recorded_heads is not None else None
    try:
        config = saved if saved is not None else infer_config(state_dict, heads)
    except UnknownHeadCountError as e:
        beside = (
            f"put Hugging Face's config.json (with n_head) beside it as {weights.parent / 'config.json'}"
            if fmt == "hf"
            else f"write {book_config_path(weights).name} beside it with the book's GPT_CONFIG: 'scratchbot convert "
            f"{weights.name} NEW.pth --format book --n-heads N' writes both"
        )
        raise CheckpointError(
            f"{weights}: {e}. Say how many heads it has: {beside} (what `run` and `reload` read), or pass "
            "--n-heads N to a command that loads it"
        ) from e
    except (ValueError, TypeError) as e:  # ConfigError: not a GPT state dict, or heads that do not divide the width
        raise CheckpointError(f"{weights}: {e}") from e
    if fmt == "hf" and not config.qkv_bias:
        _drop_zero_qkv_biases(state_dict, weights)  # exported by us from a model without q/k/v biases
    check_tensors(state_dict, config, weights, origin)
    return ReadCheckpoint(state_dict, config, fmt, metadata, weights)


def checkpoint_files(path: Path) -> list[Path]:
    """Every file a load of ``path`` may read, whether it exists or not: for a directory, its weight files and
    ``config.json``; for a file, itself and the ``config.json`` beside it when it is named as Hugging Face names
    weights; and for each weights file the book's ``<name>.json`` beside it. Whoever confines loading to a
    directory checks these (`bot.core.checkpoint_names`); `_locate` and `read_checkpoint` read no others."""
    weights = [path / name for name in HF_WEIGHT_FILES] if path.is_dir() else [path]
    configs = [w.parent / "config.json" for w in weights if w.name in HF_WEIGHT_FILES]
    return list(dict.fromkeys([*weights, *configs, *(book_config_path(w) for w in weights)]))


def _locate(path: Path) -> tuple[Path, Path | None]:
    """The weights file to read, and the Hugging Face ``config.json`` beside it if there is one."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    weights = path
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            hint = "sharded checkpoints are not supported" if any(path.glob("*.index.json")) else "give a file"
            raise CheckpointError(f"directory {path} has no {' or '.join(HF_WEIGHT_FILES)}; {hint}")
        weights = found[0]
    config_json = weights.parent / "config.json"
    return weights, config_json if weights.name in HF_WEIGHT_FILES and config_json.is_file() else None


def _sniff(file: Path) -> str:
    """Which container the file is, from its first bytes: "zip", "pickle" or "safetensors"."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocols 2..5
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 little-endian header length, then JSON
        if int.from_bytes(head[:8], "little") > size - 8:
            raise CheckpointError(f"{file} is a truncated safetensors file; copy or export it again")
        return "safetensors"
    raise CheckpointError(
        f"{file} ({size} bytes) is neither a PyTorch nor a safetensors file; expected a .pth/.bin from torch.save, "
        "a .safetensors file or a Hugging Face GPT-2 directory"
    )


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 (not a dict)
    except SafetensorError as e:
        raise CheckpointError(f"{file} is a corrupt or truncated safetensors file ({e}); copy it again") from e


def _config_from_metadata(metadata: Mapping[str, str], file: Path) -> GPTConfig | None:
    if CONFIG_KEY not in metadata:
        return None
    try:
        return GPTConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ValueError, TypeError, ConfigError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{file}: the config in its metadata is unreadable ({e}); export it again") from e


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{file} is not readable JSON ({e}); fix or remove it") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object; fix or remove it")
    return data


def _drop_zero_qkv_biases(state_dict: dict[str, torch.Tensor], file: Path) -> None:
    for name in [k for k in state_dict if k.endswith(("W_query.bias", "W_key.bias", "W_value.bias"))]:
        if torch.count_nonzero(state_dict[name]):
            raise CheckpointError(f"{file}: its config has no q/k/v biases but {name} is not zero; export it again")
        del state_dict[name]
