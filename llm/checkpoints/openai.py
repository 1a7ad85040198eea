"""OpenAI's original GPT-2 release (TensorFlow names) and the book's names side by side: one table, read from disk.

OpenAI's ``gpt-2/src/model.py`` names its variables ``model/h0/attn/c_attn/w`` and so on; its projections are
``conv1d`` layers whose weights are stored ``[1, in, out]``. The book's ``load_weights_into_gpt`` (chapter 5)
squeezes the leading 1, splits ``c_attn`` into q, k and v along the last axis, transposes every projection to
``nn.Linear``'s ``(out, in)``, and uses the token embedding as the output head (GPT-2 ties them). The table below is
that function written as data (applied by `llm.checkpoints.names`); `convert_openai_checkpoint` applies it to a
downloaded release directory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from llm.checkpoints.common import SOURCE_FORMAT_KEY, SOURCE_SHA256_KEY, CheckpointError, check_tensors, file_sha256
from llm.checkpoints.names import NameTable, to_book
from llm.checkpoints.save import save_checkpoint
from llm.checkpoints.tf_bundle import TFCheckpoint
from llm.config import ConfigError, GPTConfig

log = logging.getLogger(__name__)

SOURCE_FORMAT = "openai-tf"
PREFIX = "model/"  # every weight of the release lives under this scope

OPENAI = NameTable(
    to_book={
        "model/wte": "tok_emb.weight",
        "model/wpe": "pos_emb.weight",
        "model/h{n}/ln_1/g": "trf_blocks.{n}.norm1.scale",
        "model/h{n}/ln_1/b": "trf_blocks.{n}.norm1.shift",
        "model/h{n}/attn/c_attn/w": (
            "trf_blocks.{n}.att.W_query.weight",
            "trf_blocks.{n}.att.W_key.weight",
            "trf_blocks.{n}.att.W_value.weight",
        ),
        "model/h{n}/attn/c_attn/b": (
            "trf_blocks.{n}.att.W_query.bias",
            "trf_blocks.{n}.att.W_key.bias",
            "trf_blocks.{n}.att.W_value.bias",
        ),
        "model/h{n}/attn/c_proj/w": "trf_blocks.{n}.att.out_proj.weight",
        "model/h{n}/attn/c_proj/b": "trf_blocks.{n}.att.out_proj.bias",
        "model/h{n}/ln_2/g": "trf_blocks.{n}.norm2.scale",
        "model/h{n}/ln_2/b": "trf_blocks.{n}.norm2.shift",
        "model/h{n}/mlp/c_fc/w": "trf_blocks.{n}.ff.layers.0.weight",
        "model/h{n}/mlp/c_fc/b": "trf_blocks.{n}.ff.layers.0.bias",
        "model/h{n}/mlp/c_proj/w": "trf_blocks.{n}.ff.layers.2.weight",
        "model/h{n}/mlp/c_proj/b": "trf_blocks.{n}.ff.layers.2.bias",
        "model/ln_f/g": "final_norm.scale",
        "model/ln_f/b": "final_norm.shift",
    },
    # conv1d weights, stored [1, in, out]: the leading 1 squeezed, then transposed (each part of a fused tensor).
    transposed=frozenset(
        {"model/h{n}/attn/c_attn/w", "model/h{n}/attn/c_proj/w", "model/h{n}/mlp/c_fc/w", "model/h{n}/mlp/c_proj/w"}
    ),
    block=re.compile(r"^model/h(\d+)/"),
)

# The head is not stored: GPT-2 ties it to the token embedding, as `load_weights_into_gpt` does with params["wte"].
TIED_HEAD = ("out_head.weight", "tok_emb.weight")

# hparams.json field -> GPTConfig field. OpenAI's GPT-2 always has q/k/v biases and trains without dropout here.
HPARAMS_TO_CONFIG = {"n_vocab": "vocab_size", "n_ctx": "context_length", "n_embd": "emb_dim", "n_head": "n_heads"}


def config_from_hparams(hparams: dict[str, Any]) -> GPTConfig:
    """The `GPTConfig` of a release's ``hparams.json``."""
    fields = {ours: hparams[theirs] for theirs, ours in HPARAMS_TO_CONFIG.items() if theirs in hparams}
    missing = [k for k in (*HPARAMS_TO_CONFIG, "n_layer") if k not in hparams]
    if missing:
        raise ConfigError(f"hparams.json lacks {', '.join(missing)}")
    return GPTConfig(**fields, n_layers=hparams["n_layer"], qkv_bias=True)


def openai_to_book(
    names: Iterable[str], read: Callable[[str], torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors in the book's names from a release's tensors (``read(name)``); also book name -> OpenAI name.

    Names under ``model/`` the table does not know are passed through unchanged, so the caller's shape check reports
    them as unexpected; anything outside ``model/`` (training state) is skipped.
    """

    def matrix(name: str, template: str) -> torch.Tensor:
        tensor = read(name)
        if template in OPENAI.transposed:
            if tensor.dim() == 3 and tensor.shape[0] == 1:
                tensor = tensor[0]  # [1, in, out] -> (in, out)
            if tensor.dim() != 2:
                raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}, not [1, in, out]")
        return tensor

    book, origin, unknown = to_book(OPENAI, names, matrix)
    head, embedding = TIED_HEAD
    if embedding in book:
        book[head] = book[embedding]
        origin[head] = f"{origin[embedding]} (tied)"
    for name in sorted(unknown):
        if name.startswith(PREFIX):
            book[name] = read(name)  # unknown weight: the shape check names it
        else:
            log.info("skipping %s: not a model weight", name)
    return book, origin


def checkpoint_prefix(directory: Path) -> Path:
    """The checkpoint a release directory's ``checkpoint`` file names (as ``tf.train.latest_checkpoint``)."""
    state = directory / "checkpoint"
    if state.exists():
        found = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(encoding="utf-8"), re.MULTILINE)
        if found:
            prefix = Path(found.group(1))
            return prefix if prefix.is_absolute() else directory / prefix
    return directory / "model.ckpt"


def convert_openai_checkpoint(
    directory: str | os.PathLike[str], dst: str | os.PathLike[str], *, metadata: dict[str, str] | None = None
) -> Path:
    """Convert a GPT-2 release directory (``hparams.json`` + ``model.ckpt.*``) to the project's safetensors file.

    Every tensor is checked against the CRC32C in the index; a damaged data file raises
    `llm.checkpoints.tf_bundle.CorruptTensorError`, which a downloader answers by fetching it again.
    """
    directory = Path(directory)
    hparams_file = directory / "hparams.json"
    try:
        hparams = json.loads(hparams_file.read_text(encoding="utf-8"))
        config = config_from_hparams(hparams)
    except (OSError, ValueError, TypeError) as e:  # JSONDecodeError and ConfigError are ValueErrors
        raise CheckpointError(f"{hparams_file} is missing or unreadable ({e}); download the model again") from e
    checkpoint = TFCheckpoint(checkpoint_prefix(directory))
    state_dict, origin = openai_to_book(checkpoint.entries, checkpoint.read)
    check_tensors(state_dict, config, directory, origin)
    data_files = sorted({checkpoint.shard_path(e.shard_id) for e in checkpoint.entries.values()})
    info = {
        **(metadata or {}),
        SOURCE_FORMAT_KEY: SOURCE_FORMAT,
        SOURCE_SHA256_KEY: ",".join(file_sha256(f) for f in data_files),
    }
    return save_checkpoint(state_dict, dst, "safetensors", config=config, metadata=info)
