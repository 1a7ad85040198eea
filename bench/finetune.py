"""Finetuning speed: the project's fast path against the book's own loop (``--exact``) on the chapter-7 recipe.

The recipe: the 935 training records of the bundled chapter-7 data, batch 8, AdamW lr 5e-5 weight decay 0.1, on
gpt2-small with random weights (no pretrained weights here; speed does not depend on them). The measure is real
(non-padding) tokens per second of training steps, the same for every path: padding is work the book's loop does and
the fast path avoids, so it counts as time but not as tokens.

Shared machines are noisy, so the paths take turns: each round runs every path (in a rotating order) from the same
initial weights for one warm-up step and --steps measured steps (the same batches every round). Other jobs can only
slow a round down, so the table gives each path's best round (as ``timeit`` takes the minimum), the ratio to the
book's loop, and the 2-epoch time that rate implies; every round is printed as well.

    .venv/bin/python bench/finetune.py                        # CPU: 3 rounds of 3 steps per path
    .venv/bin/python bench/finetune.py --device cuda --model gpt2-medium --steps 20 --compile

Not part of the test run; its time is bounded by --rounds x --steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from llm.assets import INSTRUCTION_DATA
from llm.config import GPTConfig
from llm.model import GPTModel
from llm.tokenizer import Tokenizer
from llm.training.data import InstructionDataset, load_records, split_records
from llm.training.finetune import autocast_dtype, build_model
from llm.training.loops import train_exact, train_fast
from llm.training.recipe import FinetuneConfig

EPOCHS = 2  # the book's


def measure(
    config: FinetuneConfig,
    model_config: GPTConfig,
    initial: dict[str, torch.Tensor],
    data: tuple[InstructionDataset, InstructionDataset],
    device: str,
) -> tuple[float, float, float]:
    """(tokens/s, seconds per step, padding share) of the measured steps of one run from ``initial``."""
    model = GPTModel(model_config)
    model.load_state_dict(initial)
    model.to(device)
    if config.exact:
        history = train_exact(model, *data, config, device)
    else:
        history = train_fast(model, *data, config, device, autocast_dtype(config, device))
    tokens, positions = sum(history.step_tokens[1:]), sum(history.step_positions[1:])
    seconds = sum(history.step_seconds[1:])
    return tokens / seconds, seconds / (len(history.step_seconds) - 1), 1 - tokens / positions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each path runs once per round")
    parser.add_argument("--compile", action="store_true", help="also run the fast path with torch.compile")
    args = parser.parse_args()

    base = FinetuneConfig(
        data=INSTRUCTION_DATA, out=Path("unused.safetensors"), init=args.model, eval_every=0, progress=False,
        plot=False, max_steps=args.steps + 1,
    )  # fmt: skip
    split = split_records(load_records(INSTRUCTION_DATA))
    tokenizer = Tokenizer()
    data = (InstructionDataset(split.train, tokenizer, 1024), InstructionDataset(split.validation, tokenizer, 1024))
    steps_per_epoch = len(data[0]) // base.batch_size
    kept = steps_per_epoch * base.batch_size / len(data[0])  # drop_last leaves out a partial batch each epoch
    recipe_tokens = round(EPOCHS * sum(data[0].lengths) * kept)
    start = build_model(base, "cpu")
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    paths = {
        "book loop (--exact)": replace(base, exact=True),
        "fast path, fp32": replace(base, precision="fp32"),
        "fast path (default)": base,
    }
    if args.compile:
        paths["fast path + --compile"] = replace(base, compile=True)

    print(
        f"finetune benchmark: {args.model} ({start.num_parameters / 1e6:.0f}M parameters, random weights), "
        f"{len(data[0])} training records, batch {base.batch_size}, {EPOCHS} epochs = {EPOCHS * steps_per_epoch} "
        f"steps, ~{recipe_tokens:,} tokens"
    )
    print(
        f"device {args.device} ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"{args.rounds} rounds x {args.steps} measured steps per path; load average {os.getloadavg()[0]:.2f}"
    )
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in paths}
    started = time.perf_counter()
    names = list(paths)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(measure(paths[name], start.config, initial, data, args.device))
            rate, per_step, _ = results[name][-1]
            print(f"  round {r + 1}: {name:24} {per_step:6.2f} s/step {rate:7,.0f} tokens/s", flush=True)
    print(f"{time.perf_counter() - started:.0f} s in all; load average at the end {os.getloadavg()[0]:.2f}\n")

    header = f"{'path':24} {'precision':>9} {'s/step':>7} {'padding':>8} {'tokens/s':>9} {'vs book':>8} {'2 epochs':>9}"
    print(header)
    print("-" * len(header))
    best = {name: max(runs) for name, runs in results.items()}  # the fastest round: (tokens/s, s/step, padding)
    book_rate = best[names[0]][0]
    for name, (rate, per_step, padding) in best.items():
        precision = "fp32" if autocast_dtype(paths[name], args.device) is None else "bf16"
        print(
            f"{name:24} {precision:>9} {per_step:7.2f} {padding:8.1%} {rate:9,.0f} {rate / book_rate:7.2f}x "
            f"{recipe_tokens / rate:8.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
