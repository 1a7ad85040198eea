"""Concurrency benchmark: aggregate tokens/s of `LocalGenerator` at 1, 4, 8 and 16 simultaneous requests.

gpt2-small with random weights (GPT-2's initialisation, seed 0) runs on the CPU behind the real `LocalGenerator`
(worker thread, continuous-batching engine, bounded queue), driven from the event loop exactly as the bot drives it.
Each level starts N requests of --new-tokens greedy tokens at once, each with its own prompt, and waits for all of
them. The named peer is the same generator serving ONE request: the ratio of aggregate throughput at 8 concurrent
requests to that single-request throughput is what continuous batching buys (target: >= 4 on a 2-core CPU). With
the default --max-batch 8, 16 requests run as 8 plus 8 waiting, as in the service, and their time to first token
shows the queueing.

End-of-text stops nobody unnoticed: every request must come back with all --new-tokens tokens (finish reason
"length"); otherwise the run says which and exits non-zero. Levels are interleaved over --repeats rounds so machine
noise hits all of them alike; the table shows the median round.

The second part measures the service core's own cost per message (everything but the model): a
`ConversationManager` on a throwaway SQLite file, with a generator that answers at once, handles --messages chat
messages one after another (store the turn, read history, render the prompt, stream, store the answer). Target:
p95 < 5 ms.

    python bench/concurrency.py                        # fp32, levels 1 4 8 16, 128 tokens, 2 rounds
    python bench/concurrency.py --precision int8 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

# Run as `python bench/concurrency.py`, this file's directory heads sys.path; put the repository root there instead.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch

from bot.inference.generator import Completion, GenerationHandle, GeneratorStats, ModelInfo
from bot.inference.local import LocalGenerator
from llm.checkpoints.common import LoadedCheckpoint
from llm.config import GPTConfig
from llm.decoding.quantize import MODES
from llm.decoding.sampling import SamplingParams
from llm.model import GPTModel
from llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

RATIO_LEVEL, RATIO_TARGET = 8, 4.0
OVERHEAD_TARGET_MS = 5.0
TOPICS = ["the sea", "a lighthouse", "bread", "the moon", "trains", "a garden", "winter", "bees"]


@dataclass
class Round:
    level: int
    seconds: float  # from the first request's start to the last one's end
    results: list[Completion]

    @property
    def tokens(self) -> int:
        return sum(r.new_tokens for r in self.results)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def prompts(tokenizer: Tokenizer, n: int) -> list[list[int]]:
    return [
        tokenizer.encode(f"Request {i}: write a short story about {TOPICS[i % len(TOPICS)]}, in plain words.")
        for i in range(n)
    ]


async def one_level(generator: LocalGenerator, ids: list[list[int]], params: SamplingParams) -> Round:
    async def one(prompt: list[int]) -> Completion:
        async with generator.stream(prompt, params, timeout_s=600) as handle:
            async for _ in handle:
                pass
        return handle.result

    began = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in ids))
    return Round(len(ids), time.perf_counter() - began, list(results))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_throughput(args: argparse.Namespace) -> bool:
    torch.set_num_threads(args.threads)
    config = GPTConfig.from_name("gpt2-small")
    model = GPTModel(config).init_weights(torch.Generator().manual_seed(0)).eval()
    checkpoint = LoadedCheckpoint(model, config, "memory", "0" * 64, Path("gpt2-small-random"))
    tokenizer = Tokenizer()
    generator = LocalGenerator(
        checkpoint, tokenizer, name="gpt2-small-random", precision=args.precision, max_batch=args.max_batch
    )
    await generator.start()
    all_ids = prompts(tokenizer, max(args.levels))
    params = SamplingParams(max_new_tokens=args.new_tokens)
    print(
        f"gpt2-small random weights, {args.precision}, CPU, {torch.get_num_threads()} threads, "
        f"max_batch {args.max_batch}, {args.new_tokens} greedy tokens per request, {args.repeats} rounds (median)"
    )
    try:
        # Warm-up: kernels for one row and for a full batch, short answers.
        await one_level(generator, all_ids[:1], SamplingParams(max_new_tokens=8))
        await one_level(generator, all_ids[: args.max_batch], SamplingParams(max_new_tokens=8))
        rounds: dict[int, list[Round]] = {level: [] for level in args.levels}
        for r in range(args.repeats):
            order = args.levels if r % 2 == 0 else list(reversed(args.levels))
            for level in order:
                rounds[level].append(await one_level(generator, all_ids[:level], params))
    finally:
        await generator.close(grace_s=0)
    ok = True
    print(f"{'requests':>8} {'tokens/s':>9} {'per req':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'wall s':>7}")
    medians: dict[int, float] = {}
    for level, runs in rounds.items():
        median = sorted(runs, key=lambda run: run.tokens_per_second)[len(runs) // 2]
        medians[level] = median.tokens_per_second
        ttft = [c.first_token_seconds or 0.0 for run in runs for c in run.results]
        print(
            f"{level:>8} {median.tokens_per_second:>9.1f} {median.tokens_per_second / level:>8.1f} "
            f"{percentile(ttft, 0.5) * 1000:>7.0f}ms {percentile(ttft, 0.95) * 1000:>7.0f}ms {median.seconds:>7.1f}"
        )
        short = [c for run in runs for c in run.results if c.new_tokens != args.new_tokens]
        if short:
            ok = False
            reasons = ", ".join(sorted({c.finish_reason for c in short}))
            print(f"  ! {len(short)} requests ended before {args.new_tokens} tokens ({reasons}); pick other prompts")
    if 1 in medians and RATIO_LEVEL in medians:
        ratio = medians[RATIO_LEVEL] / medians[1]
        verdict = "meets" if ratio >= RATIO_TARGET else "MISSES"
        print(
            f"aggregate throughput at {RATIO_LEVEL} requests / single request: {ratio:.2f}x "
            f"({verdict} the target >= {RATIO_TARGET:g})"
        )
    return ok


# ---------------------------------------------------------------------------------------------------------------
# Core overhead per message, with a generator that answers at once


class InstantGenerator:
    """A `Generator` with no model: every request is answered with the same few deltas, on the next loop turn."""

    def __init__(self, answer: str = " A short answer, streamed in a few pieces.") -> None:
        self._answer = answer
        self._info = ModelInfo("instant", "f" * 64, 0, "none", "fp32", 1024, datetime.now(UTC))

    @property
    def context_length(self) -> int:
        return self._info.context_length

    @property
    def info(self) -> ModelInfo:
        return self._info

    def stats(self) -> GeneratorStats:
        return GeneratorStats(queue_depth=0, active=0, recent_tokens_per_second=0.0)

    def stream(self, prompt_ids: list[int], params: SamplingParams, *, timeout_s: float | None = None):
        def submit(handle: GenerationHandle) -> None:
            asyncio.get_running_loop().call_soon(self._play, handle)

        return GenerationHandle(submit, lambda handle: None)

    def _play(self, handle: GenerationHandle) -> None:
        for word in self._answer.split(" ")[1:]:
            handle.feed(" " + word)
        handle.finish(Completion(self._answer, (1, 2, 3), "eot", self._info.name, self._info.sha256, 0.0, 0.0))

    async def reload(self, path: Path, name: str) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        return None

    async def close(self, grace_s: float) -> None:
        return None


class NullReply:
    async def send(self, text: str) -> None:
        return None

    async def stream(self, deltas: AsyncIterator[str]) -> str:
        return "".join([d async for d in deltas])


async def measure_core_overhead(messages: int) -> bool:
    """Per-message time of `ConversationManager.handle` for chat messages, the model replaced by `InstantGenerator`."""
    from bot.core.auth import AdminPolicy
    from bot.core.channel_settings import ChannelConfig
    from bot.core.conversation import ConversationManager, ManagerConfig
    from bot.core.messages import Incoming
    from bot.core.ratelimit import RateLimiter
    from storage.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}") as store:
            defaults = ChannelConfig(max_new_tokens=256, temperature=0.0, top_k=None, top_p=None, history_messages=20)
            manager = ConversationManager(
                store,
                InstantGenerator(),
                Tokenizer(),
                AdminPolicy({}),
                RateLimiter(1_000_000),
                Path(tmp),
                ManagerConfig(defaults=defaults),
            )
            times: list[float] = []
            for i in range(messages + 10):  # the first 10 warm up the caches and the connection pool
                incoming = Incoming(
                    platform="console",
                    tenant="bench",
                    channel=f"channel-{i % 5}",  # histories grow to messages/5 turns, 20 of which are read back
                    author_id=f"user-{i % 7}",
                    text=f"Question {i}: what is a good name for a cat that likes {TOPICS[i % len(TOPICS)]}?",
                    message_id=f"m{i}",
                )
                began = time.perf_counter()
                await manager.handle(incoming, NullReply())
                times.append(time.perf_counter() - began)
    times = times[10:]
    p50, p95 = percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000
    verdict = "meets" if p95 < OVERHEAD_TARGET_MS else "MISSES"
    print(
        f"core overhead per chat message (ConversationManager + SQLite, instant generator, {messages} messages): "
        f"p50 {p50:.2f} ms, p95 {p95:.2f} ms ({verdict} the target p95 < {OVERHEAD_TARGET_MS:g} ms)"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=MODES, default="fp32")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16], help="concurrent requests")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens each request generates")
    parser.add_argument("--max-batch", type=int, default=8, help="rows of the engine (the service's default is 8)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per level (the median is reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--messages", type=int, default=300, help="chat messages for the core-overhead part")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ok = asyncio.run(measure_throughput(args))
    asyncio.run(measure_core_overhead(args.messages))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
