"""Writing checkpoints: any format from a model or a state dict in the book's names, and conversions between them.
Every file is written beside its destination and renamed over it, so a reader never sees half a file."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from llm.checkpoints.book import MASK_BUFFER, book_config_json, book_config_path, strip_wrappers, with_book_masks
from llm.checkpoints.common import (
    CONFIG_KEY,
    FORMATS,
    LAYOUT,
    LAYOUT_KEY,
    SOURCE_FORMAT_KEY,
    SOURCE_SHA256_KEY,
    CheckpointError,
    check_tensors,
    config_json,
    describe_config,
    file_sha256,
)
from llm.checkpoints.hf import book_to_hf, hf_config_json
from llm.checkpoints.hf_tokenizer import TOKENIZER_FILES, write_tokenizer_files
from llm.checkpoints.load import read_checkpoint
from llm.config import ConfigError, GPTConfig, infer_config

log = logging.getLogger(__name__)


def save_checkpoint(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    format: str = "safetensors",
    *,
    config: GPTConfig | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model (or its state dict, in the book's names) as ``format``; return the path written.

    ``config`` defaults to the model's own, or is inferred from a state dict's shapes. ``metadata`` (values that are
    not strings are stored as JSON) goes into the safetensors header of "safetensors" and "hf"; "book" has none.
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; choose one of: {', '.join(FORMATS)}")
    state_dict, config = _state_dict_to_save(model_or_state_dict, config)
    check_tensors(state_dict, config, "the model to save")
    extra = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    path = Path(path)
    if format == "hf":
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path} is a file; the Hugging Face format is a directory: give a directory path")
        tensors, tied = book_to_hf(state_dict, config)
        header = {**extra, "format": "pt", CONFIG_KEY: config_json(config)}
        hf_config = hf_config_json(config, tied=tied, dtype=state_dict["tok_emb.weight"].dtype)
        _write_atomically(path / "model.safetensors", lambda tmp: save_file(_for_file(tensors), tmp, header))
        _write_atomically(path / "config.json", lambda tmp: tmp.write_text(json.dumps(hf_config, indent=2) + "\n"))
        # The tokenizer beside the weights: engines that read a Hugging Face directory (vLLM, transformers) need it.
        write_tokenizer_files(
            path,
            config.context_length,
            lambda file, text: _write_atomically(file, lambda tmp: tmp.write_text(text, encoding="utf-8")),
        )
    else:
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory; the {format} format is one file: give a file path")
        if format == "safetensors":
            header = {**extra, "format": "pt", LAYOUT_KEY: LAYOUT, CONFIG_KEY: config_json(config)}
            _write_atomically(path, lambda tmp: save_file(_for_file(state_dict), tmp, header))
        else:
            book = with_book_masks(_for_file(state_dict), config)
            # The config first: a reader that sees the new weights must not find the old file's head count.
            _write_atomically(book_config_path(path), lambda tmp: tmp.write_text(book_config_json(config)))
            _write_atomically(path, lambda tmp: torch.save(book, tmp))
    log.info("saved %s checkpoint %s (%s)", format, path, describe_config(config))
    return path


def written_paths(path: str | os.PathLike[str], format: str) -> list[Path]:
    """The files `save_checkpoint` writes for ``path`` in ``format`` (to refuse overwriting them)."""
    path = Path(path)
    if format == "hf":
        return [path / "model.safetensors", path / "config.json", *(path / name for name in TOKENIZER_FILES)]
    return [path, book_config_path(path)] if format == "book" else [path]


def convert_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str, *, n_heads: int | None = None
) -> Path:
    """Convert ``src`` (any readable format) to ``dst`` in ``format``, recording the source's sha256 and format."""
    read = read_checkpoint(Path(src), n_heads)
    carried = {k: v for k, v in read.metadata.items() if k != "format" and not k.startswith("scratchbot.")}
    carried[SOURCE_SHA256_KEY] = file_sha256(read.weights_file)
    carried[SOURCE_FORMAT_KEY] = read.format
    return save_checkpoint(read.state_dict, dst, format, config=read.config, metadata=carried)


def _state_dict_to_save(
    obj: nn.Module | Mapping[str, torch.Tensor], config: GPTConfig | None
) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    if isinstance(obj, nn.Module):
        config = config or getattr(obj, "config", None)
        obj = obj.state_dict()
    state_dict = {strip_wrappers(k): v.detach() for k, v in obj.items() if not MASK_BUFFER.match(strip_wrappers(k))}
    if config is None:
        try:
            config = infer_config(state_dict)
        except ConfigError as e:
            raise CheckpointError(f"cannot save: {e}") from e
    return state_dict, config


def _for_file(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two tensors sharing memory (safetensors refuses aliases; a tied head is one)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write beside ``path`` and rename over it, so a reader (the checkpoint watcher) never sees half a file. The
    file gets the usual permissions (0644 under the common umask): safetensors alone would leave it 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; check the path and free space") from e
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    try:  # Linux says it without changing it
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE).group(1), 8)  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        mask = os.umask(0o022)  # elsewhere reading it means setting it; put it straight back
        os.umask(mask)
        return mask
