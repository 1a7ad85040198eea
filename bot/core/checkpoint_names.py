"""Checkpoint names an admin may ask for: files (or Hugging Face directories) inside the checkpoints directory,
and nothing else. A name is never a path: `../../etc/passwd`, absolute paths and links out of the directory are
refused, so chat users cannot make the bot read arbitrary files.

Links are followed only as far as the directory: a checkpoint is offered (to `/reload`, the checkpoint watch and
`run`'s newest-in-directory) only when every file loading it reads resolves inside the directory: the weights, a
Hugging Face directory's files, a `config.json` or the book's `<name>.json` beside them. A checkpoint the operator
configured (SCRATCHBOT_CHECKPOINT) is the operator's choice and may be anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

from llm import assets
from llm.checkpoints.load import checkpoint_files

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
GET_A_CHECKPOINT = (
    "no checkpoint to serve. Set SCRATCHBOT_CHECKPOINT to a checkpoint file (the book's gpt2-medium355M-sft.pth, a "
    "safetensors file or a Hugging Face GPT-2 directory), or put one in {dir}. To make one: `scratchbot download "
    "gpt2-medium --dir data/gpt2` then `scratchbot finetune`, or `scratchbot init-model gpt2-small "
    "{dir}/random.safetensors` for a random-weight model that only shows the plumbing."
)


class CheckpointNameError(ValueError):
    """The name does not denote a checkpoint in the checkpoints directory; the message says why."""


_reported: set[tuple[Path, Path]] = set()  # links out already logged: the watch lists the directory every interval


class NoCheckpointError(Exception):
    """Nothing to serve; the message says how to get a checkpoint."""


def find_checkpoint(configured: Path | None, directory: Path, bundled: Path | bool | None = True) -> Path:
    """What `run` serves (and other commands use when not told): the configured checkpoint, else the newest in the
    checkpoints directory, else the bundled demo (``bundled``: True for the package's own, or a path, or None)."""
    if bundled is True:
        bundled = assets.DEMO_CHECKPOINT
    if configured is not None:
        return configured
    available = list_checkpoints(directory)
    if available:
        return available[0]
    if isinstance(bundled, Path) and bundled.exists():
        log.warning("using the bundled demo checkpoint %s: it is small and weak; see the README", bundled.name)
        return bundled
    raise NoCheckpointError(GET_A_CHECKPOINT.format(dir=directory))


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, newest first: weight files, and directories holding Hugging Face weights."""
    if not directory.is_dir():
        return []
    root = directory.resolve()
    found = [
        p
        for p in directory.iterdir()
        if not p.name.startswith(".")
        and (
            (p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
            or (p.is_dir() and any((p / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")))
        )
        and _link_out(p, root) is None  # a link out of the directory is not a checkpoint of ours (logged once)
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_checkpoint(directory: Path, name: str | None) -> Path:
    """The checkpoint called ``name`` in ``directory`` (the newest one when ``name`` is None)."""
    if name is None:
        available = list_checkpoints(directory)
        if not available:
            raise CheckpointNameError(f"there are no checkpoints in {directory}; copy one there first")
        return available[0]
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith("."):
        raise CheckpointNameError(f"{name!r} is not a checkpoint name; give a file name from {directory}")
    root = directory.resolve()
    candidate = (directory / name).resolve()
    if not candidate.is_relative_to(root) or candidate.parent != root:
        raise CheckpointNameError(f"{name!r} points outside the checkpoints directory; refused")
    if (outside := _link_out(candidate, root)) is not None:
        raise CheckpointNameError(
            f"{name!r} would read {outside.relative_to(root)}, a link to a file outside the checkpoints directory; "
            "refused. Copy the file into the directory instead of linking to it"
        )
    if candidate not in {p.resolve() for p in list_checkpoints(directory)}:
        names = ", ".join(p.name for p in list_checkpoints(directory)[:10]) or "none"
        raise CheckpointNameError(f"no checkpoint named {name!r} in {directory}; available: {names}")
    return candidate


def _link_out(checkpoint: Path, root: Path) -> Path | None:
    """The first file loading ``checkpoint`` would read that resolves outside ``root`` (a link out, even one whose
    target does not exist yet, or a loop of links), or None when every one stays inside."""
    for file in checkpoint_files(checkpoint):
        if not (file.is_symlink() or file.exists()):
            continue  # not there: not read
        try:
            target: Path | None = file.resolve()
        except (OSError, RuntimeError):  # a loop of links: nothing to read, and nothing to trust
            target = None
        if target is None or not target.is_relative_to(root):
            if (file, root) not in _reported:
                _reported.add((file, root))
                log.warning("checkpoint %s is skipped: %s is a link out of %s", checkpoint.name, file, root)
            return file
    return None
