"""Checkpoints reached through the checkpoints directory (`/reload`, the checkpoint watch, `run`'s newest) are read
only from inside it: a link inside a checkpoint that leads out of the directory (to /etc, to ../../secret) makes the
checkpoint unusable, whichever file the link is; links that stay inside are fine. The links here are real ones."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bot.core.checkpoint_names import CheckpointNameError, find_checkpoint, list_checkpoints, resolve_checkpoint
from bot.jobs import CheckpointWatcher
from storage.store import Store
from tests.bot.core.test_admin import ADMIN, ask, build
from tests.bot.fakes import FakeGenerator


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    """A checkpoints directory with one good checkpoint, old, and secrets beside (not inside) it."""
    directory = tmp_path / "data" / "checkpoints"
    directory.mkdir(parents=True)
    (directory / "good.safetensors").write_bytes(b"weights")
    os.utime(directory / "good.safetensors", (1_000_000, 1_000_000))
    (tmp_path / "secret.safetensors").write_bytes(b"not yours")
    (tmp_path / "secret.json").write_text('{"n_heads": 12}')
    return directory


def hf_dir_whose_weights_link_out(directory: Path) -> str:
    (directory / "mymodel").mkdir()
    (directory / "mymodel" / "config.json").write_text("{}")
    (directory / "mymodel" / "model.safetensors").symlink_to(directory.parents[1] / "secret.safetensors")
    return "mymodel"


def hf_dir_with_a_relative_link_out(directory: Path) -> str:
    (directory / "relative").mkdir()
    (directory / "relative" / "model.safetensors").symlink_to(Path("..", "..", "..", "secret.safetensors"))
    return "relative"


def hf_dir_whose_config_links_out(directory: Path) -> str:
    (directory / "confhf").mkdir()
    (directory / "confhf" / "model.safetensors").write_bytes(b"weights")
    (directory / "confhf" / "config.json").symlink_to(directory.parents[1] / "secret.json")
    return "confhf"


def hf_dir_whose_other_weights_file_links_out(directory: Path) -> str:
    (directory / "binhf").mkdir()  # no model.safetensors: pytorch_model.bin is what the loader reads
    (directory / "binhf" / "pytorch_model.bin").symlink_to(directory.parents[1] / "secret.safetensors")
    return "binhf"


def book_file_whose_sidecar_links_out(directory: Path) -> str:
    (directory / "book.pth").write_bytes(b"weights")
    (directory / "book.json").symlink_to(directory.parents[1] / "secret.json")  # the config read beside it
    return "book.pth"


def top_level_weights_whose_config_links_out(directory: Path) -> str:
    (directory / "model.safetensors").write_bytes(b"weights")  # named as HF names weights: config.json beside it
    (directory / "config.json").symlink_to(directory.parents[1] / "secret.json")
    return "model.safetensors"


def hf_dir_whose_weights_link_out_to_nothing_yet(directory: Path) -> str:
    (directory / "later").mkdir()
    (directory / "later" / "pytorch_model.bin").write_bytes(b"weights")
    (directory / "later" / "model.safetensors").symlink_to(directory.parents[1] / "not-yet.safetensors")
    return "later"


def hf_dir_with_a_loop_of_links(directory: Path) -> str:
    (directory / "loop").mkdir()
    (directory / "loop" / "pytorch_model.bin").write_bytes(b"weights")
    (directory / "loop" / "model.safetensors").symlink_to(directory / "loop" / "model.safetensors")
    return "loop"


LINKS_OUT = [
    hf_dir_whose_weights_link_out,
    hf_dir_with_a_relative_link_out,
    hf_dir_whose_config_links_out,
    hf_dir_whose_other_weights_file_links_out,
    book_file_whose_sidecar_links_out,
    top_level_weights_whose_config_links_out,
    hf_dir_whose_weights_link_out_to_nothing_yet,
    hf_dir_with_a_loop_of_links,
]


@pytest.mark.parametrize("make", LINKS_OUT, ids=[f.__name__ for f in LINKS_OUT])
def test_a_checkpoint_with_a_link_out_is_neither_offered_nor_resolved(
    checkpoints: Path, make: Callable[[Path], str], caplog: pytest.LogCaptureFixture
) -> None:
    name = make(checkpoints)  # newer than good.safetensors: it would be the one served
    assert [p.name for p in list_checkpoints(checkpoints)] == ["good.safetensors"]
    assert find_checkpoint(None, checkpoints, bundled=None).name == "good.safetensors"
    with pytest.raises(CheckpointNameError, match="a link to a file outside the checkpoints directory; refused"):
        resolve_checkpoint(checkpoints, name)
    assert resolve_checkpoint(checkpoints, None).name == "good.safetensors"
    assert "is a link out of" in caplog.text  # the operator learns why it is skipped


def test_links_that_stay_inside_the_directory_are_followed(checkpoints: Path) -> None:
    (checkpoints / "shared").mkdir()
    (checkpoints / "shared" / "weights.bin").write_bytes(b"weights")
    (checkpoints / "linked").mkdir()
    (checkpoints / "linked" / "pytorch_model.bin").symlink_to(Path("..", "shared", "weights.bin"))
    (checkpoints / "alias.safetensors").symlink_to("good.safetensors")
    names = {p.name for p in list_checkpoints(checkpoints)}
    assert names == {"good.safetensors", "linked", "alias.safetensors"}
    assert resolve_checkpoint(checkpoints, "linked") == (checkpoints / "linked").resolve()


def test_the_operators_configured_checkpoint_may_be_anywhere(checkpoints: Path) -> None:
    name = hf_dir_whose_weights_link_out(checkpoints)
    configured = checkpoints / name  # SCRATCHBOT_CHECKPOINT: the operator's choice, not a chat user's
    assert find_checkpoint(configured, checkpoints) == configured


async def test_reload_refuses_a_checkpoint_that_links_out_and_keeps_serving(store: Store, checkpoints: Path) -> None:
    generator = FakeGenerator()
    manager = build(store, generator, checkpoints)
    name = hf_dir_whose_weights_link_out(checkpoints)
    reply = await ask(manager, replace(ADMIN, command="reload", text=name))
    assert reply.sent == [
        "Reload refused: 'mymodel' would read mymodel/model.safetensors, a link to a file outside the checkpoints "
        "directory; refused. Copy the file into the directory instead of linking to it"
    ]
    assert generator.info.name == "fake.safetensors"  # nothing was loaded
    audit = [a for a in await store.audit_entries() if a.action == "checkpoint.reload"]
    assert [a.detail["ok"] for a in audit] == [False]


async def test_the_watch_never_reloads_a_checkpoint_that_links_out(
    checkpoints: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloaded: list[str] = []

    async def reload(path: Path) -> bool:
        reloaded.append(path.name)
        return True

    watcher = CheckpointWatcher(checkpoints, reload, checkpoints / "good.safetensors")
    hf_dir_whose_weights_link_out(checkpoints)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert not await watcher.check()
    assert reloaded == []
    assert caplog.text.count("is a link out of") == 1  # said once, not at every look


def test_a_checkpoint_linked_in_from_outside_is_skipped_with_a_line_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside, directory = tmp_path / "outside", tmp_path / "checkpoints"
    outside.mkdir()
    directory.mkdir()
    (outside / "secret.safetensors").write_bytes(b"not ours")
    (directory / "linked.safetensors").symlink_to(outside / "secret.safetensors")
    assert list_checkpoints(directory) == []
    assert "linked.safetensors is skipped" in caplog.text and "is a link out of" in caplog.text
