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
  from ``pytorch_model.bin`` or a bare weights file. The name table is in `llm.hf_layout`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from llm import hf_layout
from llm.config import ConfigError, GPTConfig, UnknownHeadCountError, infer_config
from llm.model import GPTModel

log = logging.getLogger(__name__)

FORMATS = ("book", "safetensors", "hf")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in the order a directory is searched

# Metadata of the files this project writes (safetensors metadata is str -> str).
LAYOUT_KEY, LAYOUT = "scratchbot.layout", "gpt-book-names/1"  # the book's tensor names, version 1
CONFIG_KEY = "scratchbot.config"  # GPTConfig as JSON
SOURCE_SHA256_KEY = "scratchbot.source_sha256"  # sha256 of the file a conversion read
SOURCE_FORMAT_KEY = "scratchbot.source_format"

# The book's GPT_CONFIG, as chapter 4 spells it: what `<name>.json` beside a book `.pth` holds.
BOOK_CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")

_MASK_BUFFER = re.compile(r"^trf_blocks\.\d+\.att\.mask$")  # the book's constant causal mask; we never keep it
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")  # book ch. 5, Lightning, nanoGPT training checkpoints
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


@dataclass(frozen=True)
class _Read:
    state_dict: dict[str, torch.Tensor]  # the book's names, checked against config; may be memory-mapped
    config: GPTConfig
    format: str
    metadata: dict[str, str]
    weights_file: Path


# ---------------------------------------------------------------------------------------------------- public API


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    n_heads: int | None = None,
) -> LoadedCheckpoint:
    """A `GPTModel` in eval mode with the weights of ``path``; floating tensors cast to ``dtype`` when given."""
    read = _read(Path(path), n_heads)
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
    log.info("loaded %s checkpoint %s (%s)", read.format, path, _describe(read.config))
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
    read = _read(Path(path), n_heads)
    return read.state_dict, read.format, read.metadata


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
        tensors, tied = hf_layout.book_to_hf(state_dict, config)
        header = {**extra, "format": "pt", CONFIG_KEY: _config_json(config)}
        hf_config = hf_layout.hf_config_json(config, tied=tied, dtype=state_dict["tok_emb.weight"].dtype)
        _write_atomically(path / "model.safetensors", lambda tmp: save_file(_for_file(tensors), tmp, header))
        _write_atomically(path / "config.json", lambda tmp: tmp.write_text(json.dumps(hf_config, indent=2) + "\n"))
    else:
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory; the {format} format is one file: give a file path")
        if format == "safetensors":
            header = {**extra, "format": "pt", LAYOUT_KEY: LAYOUT, CONFIG_KEY: _config_json(config)}
            _write_atomically(path, lambda tmp: save_file(_for_file(state_dict), tmp, header))
        else:
            book = _with_book_masks(_for_file(state_dict), config)
            book_config = json.dumps({k: config.to_dict()[k] for k in BOOK_CONFIG_KEYS}, indent=2) + "\n"
            # The config first: a reader that sees the new weights must not find the old file's head count.
            _write_atomically(book_config_path(path), lambda tmp: tmp.write_text(book_config))
            _write_atomically(path, lambda tmp: torch.save(book, tmp))
    log.info("saved %s checkpoint %s (%s)", format, path, _describe(config))
    return path


def book_config_path(path: str | os.PathLike[str]) -> Path:
    """Where the config of a book ``.pth`` lives: beside it, ``<name>.json`` (the book's GPT_CONFIG keys)."""
    return Path(path).with_suffix(".json")


def written_paths(path: str | os.PathLike[str], format: str) -> list[Path]:
    """The files `save_checkpoint` writes for ``path`` in ``format`` (to refuse overwriting them)."""
    path = Path(path)
    if format == "hf":
        return [path / "model.safetensors", path / "config.json"]
    return [path, book_config_path(path)] if format == "book" else [path]


def convert_checkpoint(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], format: str, *, n_heads: int | None = None
) -> Path:
    """Convert ``src`` (any readable format) to ``dst`` in ``format``, recording the source's sha256 and format."""
    read = _read(Path(src), n_heads)
    carried = {k: v for k, v in read.metadata.items() if k != "format" and not k.startswith("scratchbot.")}
    carried[SOURCE_SHA256_KEY] = file_sha256(read.weights_file)
    carried[SOURCE_FORMAT_KEY] = read.format
    return save_checkpoint(read.state_dict, dst, format, config=read.config, metadata=carried)


def inspect_checkpoint(path: str | os.PathLike[str], *, n_heads: int | None = None) -> dict[str, Any]:
    """What ``scratchbot inspect`` prints: format, config, parameter count (as `GPTModel` counts), dtypes, sha256."""
    read = _read(Path(path), n_heads)
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
            f"{source} lacks {len(missing)} tensor(s) of a {_describe(config)}, first {missing[0]}; "
            "the file is incomplete or not the book's GPT-2 architecture"
        )
    unexpected = [k for k in state_dict if k not in wanted]
    if unexpected:
        raise CheckpointError(
            f"{source} has {len(unexpected)} tensor(s) a {_describe(config)} does not use, first {unexpected[0]!r}; "
            "it is not the book's GPT-2 architecture"
        )
    for name, shape in wanted.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            came_from = f" (converted from {origin[name]})" if name in origin else ""
            raise CheckpointError(
                f"{source}: tensor {name}{came_from} has shape {got} but a {_describe(config)} needs {shape}; "
                "the file is inconsistent (edited, cut short, or another architecture)"
            )


# ------------------------------------------------------------------------------------------------------- reading


def _read(path: Path, n_heads: int | None) -> _Read:
    weights, config_json = _locate(path)
    container = _sniff(weights)
    if container == "safetensors":
        tensors, metadata = _read_safetensors(weights)
    else:
        tensors, metadata = _unwrap(_read_pickle(weights, mmap=container == "zip"), weights), {}
    if metadata.get(LAYOUT_KEY, LAYOUT) != LAYOUT:
        raise CheckpointError(f"{weights} has layout {metadata[LAYOUT_KEY]!r}, unknown here; upgrade scratchbot")
    saved = _config_from_metadata(metadata, weights)
    origin: dict[str, str] = {}
    recorded_heads: tuple[int, str] | None = None  # what the file (or a file beside it) says, and where
    if saved is not None:
        recorded_heads = saved.n_heads, "its metadata"
    if hf_layout.is_hf_layout(tensors):
        fmt = "hf"
        hf_config = _read_json(config_json) if config_json else {}
        if problems := hf_layout.check_hf_config(hf_config):
            raise CheckpointError(f"{config_json} describes a model unlike GPT-2: {'; '.join(problems)}")
        state_dict, origin = hf_layout.hf_to_book(tensors)
        heads = hf_config.get("n_head", hf_config.get("num_attention_heads"))
        if heads is not None and saved is not None and _heads(heads, config_json) != saved.n_heads:
            raise CheckpointError(
                f"{weights}: its metadata says {saved.n_heads} attention heads but {config_json} says {heads}; one of "
                "them was edited: export the model again"
            )
        if saved is None and heads is not None:
            recorded_heads = _heads(heads, config_json), str(config_json)
    elif "tok_emb.weight" in tensors:
        fmt = "safetensors" if container == "safetensors" else "book"
        state_dict = {k: v for k, v in tensors.items() if not _MASK_BUFFER.match(k)}
        if saved is None and (sidecar := book_config_path(weights)).is_file():
            book = _read_json(sidecar)
            if "n_heads" not in book:
                raise CheckpointError(f"{sidecar} has no n_heads; write the book's GPT_CONFIG there (n_heads: ...)")
            recorded_heads = _heads(book["n_heads"], sidecar), str(sidecar)
            saved = _book_config(book, state_dict, sidecar)
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
    return _Read(state_dict, config, fmt, metadata, weights)


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


def _read_pickle(file: Path, *, mmap: bool) -> Any:
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


def _unwrap(obj: Any, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, wherever a training checkpoint keeps it, with wrapper prefixes removed."""
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{file} holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; not a state dict")
        tensors[_strip_wrappers(str(key))] = value
    if len(tensors) != len(obj):
        raise CheckpointError(f"{file} has names that collide once '_orig_mod.'/'module.' are removed")
    return tensors


def _strip_wrappers(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _config_from_metadata(metadata: Mapping[str, str], file: Path) -> GPTConfig | None:
    if CONFIG_KEY not in metadata:
        return None
    try:
        return GPTConfig.from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ValueError, TypeError, ConfigError) as e:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{file}: the config in its metadata is unreadable ({e}); export it again") from e


def _heads(value: object, source: Path | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{source}: the head count {value!r} is not a positive whole number; fix the file")
    return value


def _book_config(book: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], file: Path) -> GPTConfig:
    """The config a ``<name>.json`` gives, checked against the tensors it describes."""
    try:
        from_tensors = infer_config(state_dict, _heads(book["n_heads"], file))
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


# ------------------------------------------------------------------------------------------------------- writing


def _state_dict_to_save(
    obj: nn.Module | Mapping[str, torch.Tensor], config: GPTConfig | None
) -> tuple[dict[str, torch.Tensor], GPTConfig]:
    if isinstance(obj, nn.Module):
        config = config or getattr(obj, "config", None)
        obj = obj.state_dict()
    state_dict = {_strip_wrappers(k): v.detach() for k, v in obj.items() if not _MASK_BUFFER.match(_strip_wrappers(k))}
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


def _with_book_masks(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """The book's ``att.mask`` buffer after each block's attention tensors, where its own state_dict has it."""
    ctx = config.context_length
    mask = torch.triu(torch.ones(ctx, ctx), diagonal=1)  # (ctx, ctx); one storage, shared by every block
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        out[name] = tensor
        if name.endswith(".att.out_proj.bias"):
            out[name.removesuffix("out_proj.bias") + "mask"] = mask
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


def _config_json(config: GPTConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _describe(config: GPTConfig) -> str:
    size = config.preset_name() or "GPT"
    return (
        f"{size} model (vocab {config.vocab_size}, context {config.context_length}, width {config.emb_dim}, "
        f"{config.n_layers} layers, {config.n_heads} heads)"
    )
