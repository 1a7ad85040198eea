"""LocalGenerator: a worker thread runs the engine while the event loop streams, times out, cancels and reloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bot.inference.generator import (
    Completion,
    GenerationFailed,
    GenerationTimeout,
    GeneratorBusy,
    GeneratorClosed,
    ReloadFailed,
)
from bot.inference.local import LocalGenerator
from bot.inference.worker import InferenceWorker
from llm.checkpoints.common import LoadedCheckpoint
from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.decoding.sampling import PromptTooLongError, SamplingParams
from llm.model import GPTModel
from llm.tokenizer import Tokenizer
from tests.llm.conftest import generate_ids, make_model

TOKENIZER = Tokenizer()
CONFIG = GPTConfig(vocab_size=50257, context_length=128, emb_dim=32, n_heads=4, n_layers=2)
GREEDY = SamplingParams(max_new_tokens=20)
PROMPTS = [[464, 3290], [40, 588, 262, 3290, 13, 632], [15496], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]


def context_sensitive_model(seed: int) -> GPTModel:
    # Strong attention, so two models (and two prompts) really generate different tokens.
    model = make_model(CONFIG, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".att." in name and name.endswith("weight"):
                p.mul_(16)
    return model


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    return {
        name: save_checkpoint(context_sensitive_model(seed), tmp_path / f"{name}.safetensors")
        for name, seed in (("a", 0), ("b", 1))
    }


def slow_down(checkpoint: LoadedCheckpoint, seconds: float) -> list[float]:
    """Make every forward pass of the checkpoint's model take at least ``seconds``; return the call times."""
    real, calls = checkpoint.model.forward, []

    def forward(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(time.monotonic())
        time.sleep(seconds)
        return real(*args, **kwargs)

    checkpoint.model.forward = forward  # type: ignore[method-assign]
    return calls


@asynccontextmanager
async def serving(checkpoint: LoadedCheckpoint, **kwargs: int) -> AsyncIterator[LocalGenerator]:
    generator = LocalGenerator(checkpoint, TOKENIZER, name=checkpoint.path.name, **kwargs)
    await generator.start()
    try:
        yield generator
    finally:
        await generator.close(grace_s=5)


async def run(generator: LocalGenerator, prompt: list[int], params: SamplingParams = GREEDY) -> Completion:
    deltas = []
    async with generator.stream(prompt, params, timeout_s=30) as handle:
        async for delta in handle:
            deltas.append(delta)
    assert "".join(deltas) == handle.result.text == handle.text
    return handle.result


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def reference(path: Path, prompt: list[int], params: SamplingParams = GREEDY) -> list[int]:
    return generate_ids(load_checkpoint(path).model, prompt, params)


async def test_concurrent_streams_join_to_what_the_model_generates_alone(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    async with serving(checkpoint, max_batch=4) as generator:
        results = await asyncio.gather(*(run(generator, p) for p in PROMPTS))
        for prompt, result in zip(PROMPTS, results, strict=True):
            assert list(result.token_ids) == reference(paths["a"], prompt)
            assert result.text == TOKENIZER.decode(result.token_ids)
            assert (result.finish_reason, result.model_name, result.model_sha256) == (
                "length",
                "a.safetensors",
                checkpoint.sha256,
            )
            assert result.first_token_seconds is not None and 0 < result.first_token_seconds <= result.seconds
        assert generator.stats().recent_tokens_per_second > 0
        with pytest.raises(PromptTooLongError):
            generator.stream(list(range(130)), SamplingParams(max_new_tokens=10, overflow="error"))


async def test_a_full_queue_answers_busy_at_once(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    async with serving(checkpoint, max_batch=1, queue_size=1) as generator:
        async with AsyncExitStack() as stack:
            for prompt in PROMPTS[:2]:  # one generating, one waiting
                await stack.enter_async_context(generator.stream(prompt, SamplingParams(max_new_tokens=60)))
            await wait_until(lambda: generator.stats().active == 1)
            assert generator.stats().queue_depth == 1
            began = time.monotonic()
            with pytest.raises(GeneratorBusy, match="busy"):
                async with generator.stream(PROMPTS[2], GREEDY):
                    pass
            assert time.monotonic() - began < 0.5  # the generating request alone needs over a second
        # Leaving the two handles cancelled them; the queue takes requests again.
        await wait_until(lambda: generator.stats().active == generator.stats().queue_depth == 0)
        assert (await run(generator, PROMPTS[2], SamplingParams(max_new_tokens=3))).new_tokens == 3


async def test_a_deadline_ends_the_request_and_frees_its_slot(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    calls = slow_down(checkpoint, 0.02)
    async with serving(checkpoint, max_batch=1) as generator:
        with pytest.raises(GenerationTimeout, match=r"0\.2 seconds"):
            async with generator.stream(PROMPTS[0], SamplingParams(max_new_tokens=60), timeout_s=0.2) as handle:
                async for _ in handle:
                    pass
        assert len(calls) < 40, "the worker stopped generating for the expired request"
        await wait_until(lambda: generator.stats().active == 0)
        assert (await run(generator, PROMPTS[1], SamplingParams(max_new_tokens=3))).new_tokens == 3


async def test_a_consumer_that_leaves_early_cancels_its_request(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    calls = slow_down(checkpoint, 0.01)
    async with serving(checkpoint, max_batch=2) as generator:
        async with generator.stream(PROMPTS[0], SamplingParams(max_new_tokens=60)) as handle:
            async for _ in handle:
                break
        with pytest.raises(RuntimeError, match="cancelled"):
            _ = handle.result

        async def consume() -> None:
            async with generator.stream(PROMPTS[1], SamplingParams(max_new_tokens=60)) as h:
                async for _ in h:
                    pass

        task = asyncio.create_task(consume())
        await wait_until(lambda: generator.stats().active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: generator.stats().active == 0)
        settled = len(calls)
        await asyncio.sleep(0.1)
        assert len(calls) == settled < 60, "no forward pass runs for a cancelled request"


async def test_the_event_loop_keeps_running_while_the_model_works(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    async with serving(checkpoint, max_batch=2) as generator:
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        began = time.monotonic()
        await asyncio.gather(
            run(generator, PROMPTS[0], SamplingParams(max_new_tokens=40)), generator.reload(paths["b"], "b")
        )
        took = time.monotonic() - began
        ticker.cancel()
        assert took > 0.8 and len(gaps) > 20
        assert max(gaps) < 0.3, f"the loop stalled for {max(gaps):.3f}s while generating and reloading"


async def test_reload_under_traffic_finishes_old_requests_on_the_old_model(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    params = SamplingParams(max_new_tokens=50)
    async with serving(checkpoint, max_batch=4) as generator:
        old = [asyncio.create_task(run(generator, p, params)) for p in PROMPTS[:3]]
        await wait_until(lambda: generator.stats().active == 3)
        info = await generator.reload(paths["b"], "b.safetensors")
        still_running = generator.stats().active
        new = [asyncio.create_task(run(generator, p, params)) for p in PROMPTS[2:]]
        old_results, new_results = await asyncio.gather(*old), await asyncio.gather(*new)
        assert still_running > 0, "the reload should have happened while the old requests were generating"
        assert info.sha256 == generator.info.sha256 == load_checkpoint(paths["b"]).sha256 != checkpoint.sha256
        for prompt, result in zip(PROMPTS[:3], old_results, strict=True):
            assert result.model_sha256 == checkpoint.sha256 and result.finish_reason == "length"
            assert list(result.token_ids) == reference(paths["a"], prompt, params)
        for prompt, result in zip(PROMPTS[2:], new_results, strict=True):
            assert (result.model_name, result.model_sha256) == ("b.safetensors", info.sha256)
            assert list(result.token_ids) == reference(paths["b"], prompt, params)
        assert new_results[0].token_ids != old_results[2].token_ids, "the two models differ on the same prompt"


async def test_a_bad_checkpoint_is_refused_and_the_old_model_keeps_serving(
    paths: dict[str, Path], tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(paths["a"])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(paths["b"].read_bytes()[:5000])
    small_vocab = save_checkpoint(
        make_model(replace(CONFIG, vocab_size=1000)),
        tmp_path / "small-vocab.safetensors",
    )
    broken = make_model(CONFIG)
    with torch.no_grad():
        broken.trf_blocks[0].ff.layers[0].weight.fill_(float("nan"))
    nan_path = save_checkpoint(broken, tmp_path / "nan.safetensors")
    short = save_checkpoint(make_model(replace(CONFIG, context_length=64)), tmp_path / "short.safetensors")
    async with serving(checkpoint) as generator:
        for path, reason in (
            (corrupt, "cannot load corrupt"),
            (tmp_path / "missing.safetensors", "cannot load missing"),
            (small_vocab, "vocabulary of 1000 tokens"),
            (nan_path, "NaN"),
            (short, r"short cannot serve chat: a context of 64 tokens is too short for the prompt template"),
        ):
            with pytest.raises(ReloadFailed, match=reason):
                await generator.reload(path, path.name.removesuffix(".safetensors"))
            assert generator.info.sha256 == checkpoint.sha256
            assert (await run(generator, PROMPTS[0])).model_sha256 == checkpoint.sha256


async def test_a_failing_model_fails_its_requests_and_the_worker_keeps_serving(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    real, calls = checkpoint.model.forward, []

    def fail_third_call(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated out of memory")
        return real(*args, **kwargs)

    checkpoint.model.forward = fail_third_call  # type: ignore[method-assign]
    async with serving(checkpoint) as generator:
        with pytest.raises(GenerationFailed, match="the error was logged"):
            await run(generator, PROMPTS[0])
        assert list((await run(generator, PROMPTS[1])).token_ids) == reference(paths["a"], PROMPTS[1])


async def test_close_lets_running_answers_finish_then_refuses_new_ones(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.01)
    generator = LocalGenerator(checkpoint, TOKENIZER, name="a", max_batch=1)
    await generator.start()
    params = SamplingParams(max_new_tokens=30)
    running = [asyncio.create_task(run(generator, p, params)) for p in PROMPTS[:2]]  # one waits for the other
    await wait_until(lambda: generator.stats().active == 1)
    await generator.close(grace_s=10)
    assert [r.new_tokens for r in await asyncio.gather(*running)] == [30, 30]
    with pytest.raises(GeneratorClosed, match="shutting down"):
        generator.stream(PROMPTS[0], params)
    assert issubclass(GeneratorClosed, GeneratorBusy)


async def test_close_cuts_short_what_outlives_the_grace_period(paths: dict[str, Path]) -> None:
    checkpoint = load_checkpoint(paths["a"])
    slow_down(checkpoint, 0.02)
    generator = LocalGenerator(checkpoint, TOKENIZER, name="a")
    await generator.start()
    task = asyncio.create_task(run(generator, PROMPTS[0], SamplingParams(max_new_tokens=60)))
    await wait_until(lambda: generator.stats().active == 1)
    began = time.monotonic()
    await generator.close(grace_s=0.1)
    assert time.monotonic() - began < 1.0
    with pytest.raises(GenerationFailed, match="shut down"):
        await task


async def test_an_idle_worker_sleeps(paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    passes = 0
    real_step = InferenceWorker._step

    def counting_step(self: InferenceWorker, deliveries: list) -> None:
        nonlocal passes
        passes += 1
        real_step(self, deliveries)

    monkeypatch.setattr(InferenceWorker, "_step", counting_step)
    async with serving(load_checkpoint(paths["a"])) as generator:
        await run(generator, PROMPTS[0], SamplingParams(max_new_tokens=5))
        busy = passes
        await asyncio.sleep(0.3)
        assert passes == busy, "the worker loop ran with nothing to do"
        assert (await run(generator, PROMPTS[1], SamplingParams(max_new_tokens=5))).new_tokens == 5
