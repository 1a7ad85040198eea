"""Memory of a dropped model goes back to the system: after a reload drains the old model, the worker collects
garbage and trims the C library's heap (glibc keeps freed pages otherwise), once per drained model."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import pytest

from bot.inference import memory, worker
from bot.inference.local import LocalGenerator
from llm.checkpoints.load import load_checkpoint
from llm.decoding.sampling import SamplingParams
from tests.bot.inference.test_local import PROMPTS, TOKENIZER, paths, slow_down, wait_until

__all__ = ["paths"]  # the fixture, shared with test_local


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is a Linux thing")
def test_the_heap_can_be_trimmed_here() -> None:
    assert memory.release_freed_memory() is True


async def test_a_drained_model_is_freed_and_its_memory_released(
    paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[bool] = []
    monkeypatch.setattr(worker, "release_freed_memory", lambda: released.append(True) or True)
    checkpoint = load_checkpoint(paths["a"])
    old_model = weakref.ref(checkpoint.model)
    slow_down(checkpoint, 0.01)
    generator = LocalGenerator(checkpoint, TOKENIZER, name="a.safetensors", max_batch=1)
    del checkpoint  # the generator owns it now, as in the service
    await generator.start()
    try:
        async with generator.stream(PROMPTS[0], SamplingParams(max_new_tokens=30)) as running:
            await wait_until(lambda: generator.stats().active == 1)
            await generator.reload(paths["b"], "b.safetensors")
            assert released == []  # the old model still answers the request it started
            async for _ in running:
                pass
        await wait_until(lambda: released == [True])
        gc.collect()
        assert old_model() is None  # nothing keeps the old model alive once it drained
    finally:
        await generator.close(grace_s=5)
