"""Generation benchmark: tokens/s of our GPTModel against Hugging Face `transformers` on the same weights.

For each model size, one set of random weights (GPT-2's initialisation, seed 0) goes into our `GPTModel` and, through
the Hugging Face layout table (`llm.checkpoints.hf`), into `transformers.GPT2LMHeadModel` in fp32 with its default
attention implementation (printed). Every peer generates --new-tokens tokens greedily at batch 1 on the CPU from the
same chapter-7 prompt (one worked example and the next record's instruction in the Alpaca template, 127 tokens).
End-of-text stops nobody: Hugging Face runs without an eos id, and our runs are checked to have made every token.

The peers are Hugging Face fp32 and ours in fp32, bf16 and int8 (`llm.decoding.quantize`). After one warm-up each, the
rounds interleave the peers, the order rotating every round, so slow drifts of the machine hit all alike. The cores
may be shared: two busy OpenMP threads slow down up to tenfold while another process takes one of them, so every
round also records the CPU time its threads got; a round that got less than CLEAN_SHARE of its cores is shown in
brackets and left out of the median, and the peers short of --repeats undisturbed rounds run again (at most
--max-rounds rounds, no new round after --time-limit seconds per model; the output says when a median had to use
fewer). The speed table shows tokens/s (prefill included, as in a user's wait) as that median and as the best
round, each with its ratio to Hugging Face fp32; the targets are judged on the medians.

The quality cost of the reduced modes is measured in the same run, against our fp32:
- greedy agreement over the generated tokens: the share of positions before the first divergence, and the share
  of positions that match overall;
- on the first --ppl-records chapter-7 records (template + response + <|endoftext|>, teacher-forced, every position
  scored): the share of positions whose most likely next token is the same, the perplexity and its ratio.
The weights are random, so predictions are near-uniform (perplexity close to the vocabulary size) and the top logits
nearly tied: a tiny numeric difference flips a greedy choice, and a free-running greedy path never recovers from a
flip, so the agreement figures here are pessimistic; trained weights have clear winners.

    python bench/generate.py                                   # gpt2-small and gpt2-medium, 256 tokens, 3 rounds
    python bench/generate.py --models gpt2-small --new-tokens 64 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Run as `python bench/generate.py`, this file's directory heads sys.path; put the repository root there instead.
if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
import torch.nn.functional as F
import transformers

from llm.checkpoints.hf import book_to_hf, hf_config_json
from llm.config import GPTConfig
from llm.decoding.engine import Engine
from llm.decoding.quantize import quantize_model
from llm.decoding.runs import generate_all
from llm.decoding.sampling import EOT_ID, SamplingParams
from llm.model import GPTModel
from llm.prompts import render_example, render_prompt
from llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "instruction-data.json"
REDUCED_TARGET = 1.8  # the issue's target for a reduced-precision mode, x Hugging Face fp32
# A round whose threads got less CPU than this share of its wall time lost a core to another process. Measured on
# the 2-core machine: 0.96-0.99 undisturbed, about 0.5 when another process takes a core.
CLEAN_SHARE = 0.85


@dataclass
class Peer:
    name: str
    generate: Callable[[list[int], int], list[int]]  # (prompt ids, n) -> generated ids
    logits: Callable[[torch.Tensor], torch.Tensor]  # ids (1, T) -> logits (1, T, vocab), no cache
    rates: list[float] = field(default_factory=list)  # tokens/s of each timed round
    shares: list[float] = field(default_factory=list)  # each round's CPU time / (wall time x threads)
    ids: list[int] = field(default_factory=list)  # what the first timed round generated
    stable: bool = True  # every round generated the same ids

    @property
    def clean_rates(self) -> list[float]:
        """Rates of the rounds that had the cores to themselves."""
        return [r for r, share in zip(self.rates, self.shares, strict=True) if share >= CLEAN_SHARE]

    def timed(self, prompt: list[int], n: int) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        ids = self.generate(prompt, n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.rates.append(len(ids) / wall)
        self.shares.append(cpu / (wall * torch.get_num_threads()))
        if not self.ids:
            self.ids = ids
        self.stable &= ids == self.ids


def build_hf(model: GPTModel) -> transformers.GPT2LMHeadModel:
    """A fp32 `GPT2LMHeadModel` holding exactly ``model``'s weights."""
    tensors, tied = book_to_hf(model.state_dict(), model.config)
    hf_config = transformers.GPT2Config.from_dict(hf_config_json(model.config, tied=tied, dtype=torch.float32))
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise RuntimeError(f"weights do not fit GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    return hf


def ours(name: str, model: GPTModel) -> Peer:
    engine = Engine(model, Tokenizer(), max_batch=1)  # the service's decode loop, one request at a time

    def generate(prompt: list[int], n: int) -> list[int]:
        return generate_all(engine, [prompt], SamplingParams(max_new_tokens=n))[0].token_ids

    return Peer(name, generate, lambda ids: model(ids))


def theirs(name: str, hf: transformers.GPT2LMHeadModel) -> Peer:
    def generate(prompt: list[int], n: int) -> list[int]:
        config = transformers.GenerationConfig(
            do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=None
        )
        ids = torch.tensor([prompt])  # (1, T)
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)  # (1, T + n)
        return out[0, len(prompt) :].tolist()

    return Peer(name, generate, lambda ids: hf(ids).logits)


def chapter7_records(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise SystemExit(f"{path} is missing: the benchmark's prompt and perplexity use the chapter-7 records (--data)")
    return json.loads(path.read_text(encoding="utf-8"))


def benchmark_prompt(tokenizer: Tokenizer, records: list[dict[str, str]]) -> list[int]:
    """One worked example (record 0 with its response), then record 1's instruction awaiting a response."""
    first, second = records[0], records[1]
    text = render_example(first["instruction"], first["input"], first["output"]) + "\n\n"
    text += render_prompt(second["instruction"], second["input"])
    return tokenizer.encode(text)


@dataclass(frozen=True)
class Scores:
    perplexity: float
    top1: list[torch.Tensor]  # the most likely next token at every position of every sequence


def score(peer: Peer, sequences: list[list[int]]) -> Scores:
    """Teacher-forced: exp(mean negative log-likelihood) of every next token (fp32 loss), and each top-1 guess."""
    total, count, top1 = 0.0, 0, []
    with torch.inference_mode():
        for seq in sequences:
            ids = torch.tensor([seq])  # (1, T)
            logits = peer.logits(ids)[0, :-1].float()  # (T-1, vocab)
            total += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(seq) - 1
            top1.append(logits.argmax(dim=-1))
    return Scores(float(torch.tensor(total / count).exp()), top1)


def agreement(ids: list[int], reference: list[int]) -> tuple[float, float]:
    """(share of positions before the first difference, share of positions equal) over the reference's length."""
    n = len(reference)
    same = [i < len(ids) and ids[i] == reference[i] for i in range(n)]
    prefix = same.index(False) if False in same else n
    return prefix / n, sum(same) / n


def run_model(name: str, args: argparse.Namespace, prompt: list[int], ppl_sequences: list[list[int]]) -> list[float]:
    """Benchmark one model size; print its tables; return the median ratios vs Hugging Face fp32 of our fp32 and
    of our fastest reduced mode."""
    config = GPTConfig.from_name(name)
    base = GPTModel(config).init_weights(torch.Generator().manual_seed(0)).eval()
    hf = build_hf(base)
    with torch.inference_mode():
        x = torch.tensor([prompt])  # (1, T)
        parity = (base(x) - hf(x).logits).abs().max().item()
    peers = [
        theirs(f"HF fp32 ({hf.config._attn_implementation})", hf),
        ours("ours fp32", base),
        ours("ours bf16", quantize_model(copy.deepcopy(base), "bf16")),
        ours("ours int8", quantize_model(copy.deepcopy(base), "int8")),
    ]
    n = args.new_tokens
    deadline = time.perf_counter() + args.time_limit
    with torch.inference_mode():
        for peer in peers:
            peer.generate(prompt, 8)  # warm-up: allocator, kernels, first-call paths
        # --repeats rounds of every peer; then, while time allows, more rounds of the peers that still lack
        # --repeats undisturbed ones (a burst of other work on the shared cores does not count against a peer).
        round_ = 0
        while round_ < args.repeats or (
            round_ < args.max_rounds
            and time.perf_counter() < deadline
            and any(len(p.clean_rates) < args.repeats for p in peers)
        ):
            todo = peers if round_ < args.repeats else [p for p in peers if len(p.clean_rates) < args.repeats]
            shift = round_ % len(todo)
            for peer in todo[shift:] + todo[:shift]:
                peer.timed(prompt, n)
            round_ += 1
    scores = {peer.name: score(peer, ppl_sequences) for peer in peers}

    params = sum(p.numel() for p in base.parameters()) / 1e6
    print(
        f"\n== {name}: {params:.1f}M parameters (head untied, as the book's GPTModel), prompt {len(prompt)} tokens, "
        f"{n} new tokens, batch 1, CPU, {torch.get_num_threads()} threads, median of {args.repeats} undisturbed "
        "interleaved rounds"
    )
    print(f"   same weights in both: max |logit difference| ours fp32 vs HF fp32 on the prompt = {parity:.2e}")
    medians = [statistics.median(p.clean_rates or p.rates) for p in peers]
    bests = [max(p.rates) for p in peers]
    print(
        f"   {'speed':<22}{'median tok/s':>13}{'vs HF':>8}{'best tok/s':>12}{'vs HF':>8}   "
        f"rounds (tok/s; in brackets: lost a core to other work, left out of the median)"
    )
    for peer, median, best in zip(peers, medians, bests, strict=True):
        rounds = " ".join(
            f"{r:.1f}" if share >= CLEAN_SHARE else f"[{r:.1f}]"
            for r, share in zip(peer.rates, peer.shares, strict=True)
        )
        print(
            f"   {peer.name:<22}{median:>13.1f}{median / medians[0]:>7.2f}x{best:>12.1f}{best / bests[0]:>7.2f}x   "
            f"{rounds}"
        )
    reference = peers[1]
    ref_scores = scores[reference.name]
    print(
        f"   {'quality vs ours fp32':<22}{'greedy: prefix':>15}{'positions':>11}"
        f"{'top-1 (forced)':>16}{'perplexity':>12}{'vs fp32':>9}"
    )
    for peer in peers:
        prefix, positions = agreement(peer.ids, reference.ids)
        ppl = scores[peer.name].perplexity
        top1 = torch.cat(scores[peer.name].top1) == torch.cat(ref_scores.top1)
        print(
            f"   {peer.name:<22}{prefix:>15.1%}{positions:>11.1%}{top1.float().mean().item():>16.1%}"
            f"{ppl:>12.1f}{ppl / ref_scores.perplexity:>9.4f}"
        )
    for peer in peers:
        if len(peer.ids) < n:
            print(f"   note: {peer.name} stopped at <|endoftext|> after {len(peer.ids)} tokens; its rate counts those")
        if len(peer.clean_rates) < args.repeats:
            print(
                f"   note: {peer.name} had {len(peer.clean_rates)} undisturbed rounds of {args.repeats} wanted; "
                f"its median is over {'those' if peer.clean_rates else 'all rounds'}"
            )
        if not peer.stable:
            print(f"   note: {peer.name} did not generate the same ids in every round")
    return [medians[1] / medians[0], max(medians[2:]) / medians[0]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2-small,gpt2-medium", help="comma-separated presets")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens each peer generates per round")
    parser.add_argument("--repeats", type=int, default=3, help="undisturbed timed rounds wanted per peer")
    parser.add_argument("--max-rounds", type=int, default=6, help="rounds at most per peer, disturbed ones included")
    parser.add_argument(
        "--time-limit", type=float, default=240.0, help="seconds per model after which no extra round starts"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--ppl-records", type=int, default=50, help="chapter-7 records scored for perplexity")
    parser.add_argument("--data", type=Path, default=DATA, help="the chapter-7 instruction-data.json")
    args = parser.parse_args(argv)
    if min(args.new_tokens, args.repeats, args.threads, args.ppl_records) < 1 or args.max_rounds < args.repeats:
        parser.error("--new-tokens, --repeats, --threads, --ppl-records must be at least 1; --max-rounds >= --repeats")
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)

    tokenizer = Tokenizer()
    records = chapter7_records(args.data)
    prompt = benchmark_prompt(tokenizer, records)
    ppl_sequences = [
        [*tokenizer.encode(render_example(r["instruction"], r["input"], r["output"])), EOT_ID]
        for r in records[: args.ppl_records]
    ]
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} (other processes share these cores and slow every peer alike)"
    )
    summary = {}
    start = time.perf_counter()
    for name in args.models.split(","):
        summary[name] = run_model(name.strip(), args, prompt, ppl_sequences)
    print(f"\ntargets (issue 2): ours fp32 >= 1.00x HF fp32; a reduced mode >= {REDUCED_TARGET:.2f}x HF fp32")
    for name, (fp32, reduced) in summary.items():
        print(
            f"   {name:<12} fp32 {fp32:.2f}x ({'met' if fp32 >= 1.0 else 'NOT met'}), "
            f"best reduced {reduced:.2f}x ({'met' if reduced >= REDUCED_TARGET else 'NOT met'})"
        )
    print(f"total {time.perf_counter() - start:.0f} s, load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
