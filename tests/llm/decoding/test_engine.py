"""The continuous-batching engine: a request in a crowded batch generates what it generates alone (a fresh engine of
one row), joining and leaving mid-batch, sampling with its own seed, failing alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from llm.config import GPTConfig
from llm.decoding.cpu_layout import PackedHead, batch_friendly_layout, pack_head
from llm.decoding.engine import Engine, Event
from llm.decoding.sampling import EOT_ID, PromptTooLongError, SamplingParams
from llm.model import GPTModel
from llm.tokenizer import Tokenizer
from tests.llm.conftest import generate_ids, make_model, stream

TOKENIZER = Tokenizer()


@pytest.fixture
def model(tiny_config: GPTConfig) -> GPTModel:
    """The tiny random model with attention strong enough that every cached position changes the output.

    With GPT-2's initialisation alone, a tiny model repeats one token whatever the context, so a wrong or stale
    key/value row would go unnoticed; scaled up, a single cached position that moved wrongly changes the tokens.
    """
    model = make_model(tiny_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".att." in name and name.endswith("weight"):
                p.mul_(16)
    return model


@dataclass
class Outcome:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    reason: str | None = None
    error: Exception | None = None
    events_after_finish: int = 0


def drain(engine: Engine, outcomes: dict[int, Outcome], on_step: Callable[[int], None] | None = None) -> None:
    """Step until the engine is idle, recording every event; ``on_step(n)`` runs before step n (joins, cancels)."""
    n = 0
    while engine.has_work or (on_step is not None and n == 0):
        if on_step is not None:
            on_step(n)
        for event in engine.step():
            record(outcomes, event)
        n += 1
        assert n < 1000, "the engine never finished"


def record(outcomes: dict[int, Outcome], event: Event) -> None:
    out = outcomes.setdefault(event.seq_id, Outcome())
    if out.reason is not None:
        out.events_after_finish += 1
    if event.token_id is not None:
        out.tokens.append(event.token_id)
    out.text += event.text
    if event.finished:
        out.reason, out.error = event.finish_reason, event.error


def random_prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in lengths]


def test_batched_greedy_equals_sequential_for_mixed_prompt_lengths(model: GPTModel) -> None:
    engine = Engine(model, TOKENIZER, max_batch=4)
    prompts = random_prompts((1, 5, 17, 30))
    params = SamplingParams(max_new_tokens=25)
    seqs = [engine.submit(p, params) for p in prompts]
    outcomes: dict[int, Outcome] = {}
    drain(engine, outcomes)
    for seq, prompt in zip(seqs, prompts, strict=True):
        assert outcomes[seq].tokens == generate_ids(model, prompt, params)
        assert outcomes[seq].reason == "length" and outcomes[seq].events_after_finish == 0
        assert outcomes[seq].text == TOKENIZER.decode(outcomes[seq].tokens)
    assert engine.active == engine.waiting == 0


def test_requests_joining_and_leaving_mid_batch_match_running_alone(model: GPTModel) -> None:
    # Three rows, seven requests of different lengths and budgets: rows free up at different steps and waiting
    # requests (some submitted only after several steps) take them over, so rows move and neighbours change.
    engine = Engine(model, TOKENIZER, max_batch=3)
    prompts = random_prompts((3, 12, 1, 25, 8, 40, 6), seed=1)
    # Request 5 asks for more tokens than the 64-token context holds: its prompt is cut and the context ends it.
    budgets = (30, 4, 17, 9, 22, 100, 2)
    seqs: dict[int, int] = {}

    def join(step: int) -> None:
        starts = {0: (0, 1, 2, 3), 3: (4,), 10: (5, 6)}
        for i in starts.get(step, ()):
            seqs[i] = engine.submit(prompts[i], SamplingParams(max_new_tokens=budgets[i]))

    outcomes: dict[int, Outcome] = {}
    n = 0
    while engine.has_work or n <= 10:
        join(n)
        assert engine.active <= 3
        for event in engine.step():
            record(outcomes, event)
        n += 1
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_new_tokens=budgets[i])
        assert outcomes[seqs[i]].tokens == generate_ids(model, prompt, params), f"request {i}"
    assert outcomes[seqs[5]].reason == "context" and len(outcomes[seqs[5]].tokens) == 64 - 1
    assert all(o.reason in ("length", "context") and o.events_after_finish == 0 for o in outcomes.values())


def test_seeded_sampling_does_not_depend_on_batch_neighbours(model: GPTModel) -> None:
    sampled = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=50, seed=7)

    def run(neighbours: list[SamplingParams]) -> list[int]:
        engine = Engine(model, TOKENIZER, max_batch=4)
        prompt = [464, 3290, 318]
        others = [engine.submit(prompt, p) for p in neighbours[:1]]
        seq = engine.submit(prompt, sampled)
        others += [engine.submit([40, 588], p) for p in neighbours[1:]]
        outcomes: dict[int, Outcome] = {}
        drain(engine, outcomes)
        assert all(outcomes[o].reason in ("length", "context") for o in others)
        return outcomes[seq].tokens

    alone = run([])
    crowded = run(
        [SamplingParams(max_new_tokens=20, temperature=1.0), SamplingParams(), SamplingParams(temperature=2.0, seed=7)]
    )
    assert alone == crowded == generate_ids(model, [464, 3290, 318], sampled)
    assert run([SamplingParams(temperature=1.0, seed=8)]) == alone


def test_cancelling_frees_the_row_for_the_next_request(model: GPTModel) -> None:
    engine = Engine(model, TOKENIZER, max_batch=1)
    params = SamplingParams(max_new_tokens=30)
    first = engine.submit([1, 2, 3], params)
    second = engine.submit([4, 5, 6, 7], params)
    third = engine.submit([8], params)
    outcomes: dict[int, Outcome] = {}
    for event in engine.step():
        record(outcomes, event)
    assert (engine.active, engine.waiting) == (1, 2)
    assert engine.cancel(first) and engine.cancel(third)
    assert (engine.active, engine.waiting) == (0, 1)
    assert not engine.cancel(first), "a second cancel finds nothing"
    drain(engine, outcomes)
    assert set(outcomes) == {first, second}
    assert outcomes[first].reason is None, "a cancelled request gets no more events"
    assert outcomes[second].tokens == generate_ids(model, [4, 5, 6, 7], params)


def test_a_failing_decode_step_fails_its_batch_and_the_engine_keeps_serving(
    model: GPTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(model, TOKENIZER, max_batch=4)
    params = SamplingParams(max_new_tokens=10)
    seqs = [engine.submit(p, params) for p in ([1, 2], [3, 4, 5])]
    outcomes: dict[int, Outcome] = {}
    for event in engine.step():  # prefill, first token, one decode step
        record(outcomes, event)
    real_forward = model.forward
    calls = 0

    def fail_once(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated kernel failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", fail_once)
    for event in engine.step():
        record(outcomes, event)
    for seq in seqs:
        assert outcomes[seq].reason == "error"
        assert isinstance(outcomes[seq].error, RuntimeError)
    assert engine.active == 0
    later = engine.submit([9, 10, 11], params)
    drain(engine, outcomes)
    assert outcomes[later].tokens == generate_ids(model, [9, 10, 11], params)


def test_a_failing_prefill_fails_only_its_own_request(model: GPTModel) -> None:
    engine = Engine(model, TOKENIZER, max_batch=4)
    params = SamplingParams(max_new_tokens=8)
    good = engine.submit([1, 2, 3], params)
    bad = engine.submit([5, 99999], params)  # not a token id of this vocabulary
    also_good = engine.submit([7], params)
    outcomes: dict[int, Outcome] = {}
    drain(engine, outcomes)
    assert outcomes[bad].reason == "error" and isinstance(outcomes[bad].error, IndexError)
    assert outcomes[good].tokens == generate_ids(model, [1, 2, 3], params)
    assert outcomes[also_good].tokens == generate_ids(model, [7], params)


def test_stop_strings_end_the_text_as_the_reference_stream_does(model: GPTModel) -> None:
    prompt = TOKENIZER.encode("Once upon a time")
    full = "".join(stream(model, prompt, SamplingParams(max_new_tokens=40)))
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    params = SamplingParams(max_new_tokens=40, stop=(stop,))
    engine = Engine(model, TOKENIZER, max_batch=2)
    seq = engine.submit(prompt, params)
    free = engine.submit(prompt, SamplingParams(max_new_tokens=40))
    outcomes: dict[int, Outcome] = {}
    drain(engine, outcomes)
    assert outcomes[seq].text == full[: full.index(stop)] and outcomes[seq].reason == "stop"
    assert outcomes[free].text == full and outcomes[free].reason == "length"


def test_end_of_text_ends_a_sequence_without_becoming_output(model: GPTModel, monkeypatch: pytest.MonkeyPatch) -> None:
    real_forward = model.forward

    def eot_at_position_9(idx: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        logits = real_forward(idx, **kwargs)  # (B, T, vocab)
        at_nine = kwargs["input_pos"][:, -1] == 9  # (B,)
        logits[at_nine, -1, EOT_ID] = 1e4
        return logits

    monkeypatch.setattr(model, "forward", eot_at_position_9)
    params = SamplingParams(max_new_tokens=30)
    engine = Engine(model, TOKENIZER, max_batch=2)
    short, long = engine.submit([1, 2, 3], params), engine.submit(list(range(100, 112)), params)
    outcomes: dict[int, Outcome] = {}
    drain(engine, outcomes)
    # The token after position 9 is end-of-text: positions 3..9 hold the prompt's last token's successors.
    assert outcomes[short].reason == "eot" and len(outcomes[short].tokens) == 7
    assert outcomes[short].tokens == generate_ids(model, [1, 2, 3], params)
    assert EOT_ID not in outcomes[short].tokens
    assert outcomes[long].reason == "length" and len(outcomes[long].tokens) == 30


def test_prompt_policy_and_vocabulary_are_checked_on_the_way_in(model: GPTModel) -> None:
    engine = Engine(model, TOKENIZER, max_batch=1)
    with pytest.raises(PromptTooLongError, match="shorten it"):
        engine.submit(list(range(60)), SamplingParams(max_new_tokens=10, overflow="error"))
    assert engine.waiting == 0
    small_vocab = GPTModel(GPTConfig(vocab_size=1000, context_length=16, emb_dim=8, n_heads=2, n_layers=1))
    with pytest.raises(ValueError, match="GPT-2 tokenizer"):
        Engine(small_vocab, TOKENIZER)


def test_the_batch_layouts_keep_values_names_and_outputs(model: GPTModel) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one, rows = torch.tensor([[464]]), torch.tensor([[464, 3290, 318, 257], [40, 588, 262, 3290]])
    expected_one, expected_rows = model(one), model(rows)
    assert batch_friendly_layout(model) == 2 * (4 + 2) + 1  # two blocks of q, k, v, out_proj, two feed-forward; head
    assert batch_friendly_layout(model) == 0, "converting twice changes nothing"
    assert not model.out_head.weight.is_contiguous()
    assert pack_head(model, max_rows=4) and isinstance(model.out_head, PackedHead)
    assert not pack_head(model, max_rows=4), "packing twice changes nothing"
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(model(one), expected_one)  # one row: the plain head
    torch.testing.assert_close(model(rows), expected_rows)  # several rows: the packed copy
