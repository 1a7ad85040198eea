"""Generation: sampling rules, KV-cache equivalence, stopping, streaming and the context-overflow policy."""

from __future__ import annotations

import pytest
import torch

from llm.decoding.sampling import PromptTooLongError, SamplingParams, fit_prompt, sample
from llm.decoding.stops import StopTextDecoder
from llm.model import GPTModel
from llm.tokenizer import Tokenizer
from tests.llm.conftest import generate_ids, generate_many, generated, stream


def uncached_greedy(model: GPTModel, prompt: list[int], n: int) -> list[int]:
    """Reference: re-run the whole sequence for every token, no cache; stop at end-of-text like the library."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            if token == 50256:
                break
            out.append(token)
            ids.append(token)
    return out


def test_kv_cache_batch_of_different_lengths_equals_uncached_generation(tiny_model: GPTModel) -> None:
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (1, 5, 17, 30)]
    batched = generate_many(tiny_model, prompts, SamplingParams(max_new_tokens=25))
    for prompt, got in zip(prompts, batched, strict=True):
        assert got == uncached_greedy(tiny_model, prompt, 25)


def test_single_stream_equals_its_row_in_a_batch(tiny_model: GPTModel) -> None:
    prompts = [[464, 3290], [40, 588, 262, 3290, 13, 632]]
    batched = generate_many(tiny_model, prompts, SamplingParams(max_new_tokens=15))
    for prompt, row in zip(prompts, batched, strict=True):
        assert generate_ids(tiny_model, prompt, SamplingParams(max_new_tokens=15)) == row


def test_greedy_takes_the_argmax_and_top_k_one_is_greedy() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert sample(logits, SamplingParams()).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample(logits, SamplingParams(temperature=2.0, top_k=1), gen).tolist() == [1, 0]


def test_top_p_keeps_only_the_nucleus() -> None:
    # probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two tokens only.
    logits = torch.log(torch.tensor([[0.64, 0.24, 0.09, 0.03]]))
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample(logits, SamplingParams(temperature=1.0, top_p=0.7), gen)) for _ in range(300)}
    assert seen == {0, 1}
    seen_tiny_p = {int(sample(logits, SamplingParams(temperature=1.0, top_p=0.01), gen)) for _ in range(50)}
    assert seen_tiny_p == {0}


def test_top_k_never_samples_outside_the_k_best() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    gen = torch.Generator().manual_seed(1)
    seen = {int(sample(logits, SamplingParams(temperature=5.0, top_k=2), gen)) for _ in range(300)}
    assert seen == {1, 2}


def test_seeded_sampling_is_repeatable_and_seeds_differ(tiny_model: GPTModel) -> None:
    def run(seed: int) -> list[int]:
        params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=200, seed=seed)
        return generate_ids(tiny_model, [464, 3290], params)

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"overflow": "wrap"}, "overflow"),
        ({"stop": ("",)}, "stop strings"),
    ],
)
def test_invalid_sampling_settings_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_generation_stops_at_end_of_text(tiny_model: GPTModel) -> None:
    """A model that always prefers end-of-text stops at once and yields nothing."""
    with torch.no_grad():
        tiny_model.out_head.weight.zero_()
        tiny_model.out_head.weight[50256] = 1.0
        tiny_model.final_norm.scale.zero_()
        tiny_model.final_norm.shift.fill_(1.0)
    result = generated(tiny_model, [1, 2, 3], SamplingParams(max_new_tokens=10))
    assert result.token_ids == [] and result.text == "" and result.finish_reason == "eot"
    assert generate_many(tiny_model, [[1, 2], [3]], SamplingParams(max_new_tokens=10)) == [[], []]


def test_stop_strings_end_the_text_and_never_leak(tiny_model: GPTModel) -> None:
    tokenizer = Tokenizer()
    prompt = tokenizer.encode("Once upon a time")
    free = stream(tiny_model, prompt, SamplingParams(max_new_tokens=40))
    full = "".join(free)
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    assert len(stop) == 4 and stop in full
    stopped = stream(tiny_model, prompt, SamplingParams(max_new_tokens=40, stop=(stop,)))
    deltas = list(stopped)
    assert "".join(deltas) == full[: full.index(stop)]
    assert stopped.result.text == full[: full.index(stop)]
    assert stopped.result.finish_reason == "stop"


def test_streamed_deltas_join_to_the_decoded_tokens(tiny_model: GPTModel) -> None:
    tokenizer = Tokenizer()
    text = stream(tiny_model, tokenizer.encode("Hi"), SamplingParams(max_new_tokens=30))
    deltas = list(text)
    assert "".join(deltas) == tokenizer.decode(text.result.token_ids) == text.result.text
    assert text.result.new_tokens == len(text.result.token_ids) > 0
    assert text.result.prompt_tokens == 1


def test_overlong_prompt_keeps_its_newest_tokens_by_default(tiny_model: GPTModel) -> None:
    ctx = tiny_model.config.context_length
    prompt = list(range(1000, 1000 + ctx + 50))
    result = generated(tiny_model, prompt, SamplingParams(max_new_tokens=10))
    assert result.prompt_tokens == ctx - 10 and result.truncated_tokens == 60
    assert result.token_ids == uncached_greedy(tiny_model, prompt[-(ctx - 10) :], 10)


def test_overlong_prompt_is_refused_under_the_error_policy(tiny_model: GPTModel) -> None:
    prompt = list(range(tiny_model.config.context_length))
    with pytest.raises(PromptTooLongError, match="shorten it or lower max_new_tokens"):
        generate_ids(tiny_model, prompt, SamplingParams(max_new_tokens=10, overflow="error"))


def test_generation_ends_cleanly_at_the_end_of_the_context(tiny_model: GPTModel) -> None:
    """Asking for more tokens than the context holds leaves one position for the prompt and stops at the end."""
    ctx = tiny_model.config.context_length
    result = generated(tiny_model, [1, 2, 3], SamplingParams(max_new_tokens=5 * ctx))
    assert result.prompt_tokens == 1 and result.truncated_tokens == 2
    assert len(result.token_ids) <= ctx - 1
    if len(result.token_ids) == ctx - 1:
        assert result.finish_reason == "context"


def test_fit_prompt_rejects_an_empty_prompt() -> None:
    with pytest.raises(ValueError, match="prompt is empty"):
        fit_prompt([], 64, SamplingParams())


@pytest.mark.parametrize(
    "text,stops,expected,stopped",
    [
        ("The answer is 4.\n### Instruction:\nmore", ("\n###",), "The answer is 4.", True),
        ("almost a stop\n## but not", ("\n###",), "almost a stop\n## but not", False),
        ("ends with a partial stop\n##", ("\n###",), "ends with a partial stop\n##", False),
        ("emoji 👋🏽 then STOP here", ("STOP", "here"), "emoji 👋🏽 then ", True),
    ],
)
def test_stop_decoder_cuts_at_stops_that_span_tokens(text: str, stops: tuple, expected: str, stopped: bool) -> None:
    tokenizer = Tokenizer()
    decoder = StopTextDecoder(tokenizer, stops)
    deltas = [decoder.push(t) for t in tokenizer.encode(text)] + [decoder.finish()]
    assert "".join(deltas) == expected
    assert decoder.stopped is stopped
    assert not any(s in d for d in deltas for s in stops)
