"""Reduced precision: int8 layers compute what their dequantized weights say, quantized models stay close to fp32,
generation works in every mode, and the module tree keeps the book's names."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm.config import GPTConfig
from llm.decoding import quantize
from llm.decoding.quantize import MODES, Int8Linear, MatVecLinear, quantize_model
from llm.decoding.sampling import SamplingParams
from llm.decoding.steps import make_cache
from llm.model import GPTModel
from llm.tokenizer import Tokenizer
from tests.llm.conftest import generate_ids, generate_many, generate_text, make_model

# Widths divisible by 16 take the fused int8 kernel; the full vocabulary lets the tokenizer's ids through.
CONFIG = GPTConfig(vocab_size=50257, context_length=64, emb_dim=64, n_heads=4, n_layers=2)
PROMPT = [464, 3290, 318, 257, 922, 1110, 13]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm())


def successor_model() -> tuple[GPTModel, torch.Tensor]:
    """A model whose greedy next token is ``successor[current token]`` by a wide margin, and that table.

    Large token embeddings dominate the residual stream, and the head's row for ``successor[i]`` is token i's
    embedding, so the top logit leads the next one by several units (about 4% of the logit range): far more than
    bf16 or int8 rounding moves a logit, so every mode must follow the same chain of distinct tokens.
    """
    model = make_model(CONFIG)
    successor = torch.randperm(CONFIG.vocab_size - 1, generator=torch.Generator().manual_seed(1))
    successor = torch.cat([successor, torch.tensor([CONFIG.vocab_size - 1])])  # end-of-text maps to itself only
    with torch.no_grad():
        model.tok_emb.weight.mul_(50.0)
        model.out_head.weight[successor] = model.tok_emb.weight
    return model, successor


def chain(successor: torch.Tensor, start: int, n: int) -> list[int]:
    out = [int(successor[start])]
    while len(out) < n:
        out.append(int(successor[out[-1]]))
    return out


@pytest.mark.parametrize("in_features", [64, 40], ids=["fused-kernel", "width-not-multiple-of-16"])
@pytest.mark.parametrize("rows", [1, 3, 40], ids=["1-row", "3-rows", "40-rows"])
def test_int8_linear_matches_its_dequantized_weight(in_features: int, rows: int) -> None:
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(in_features, 48)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, in_features, generator=gen) * torch.rand(48, 1, generator=gen))
        linear.bias.copy_(torch.randn(48, generator=gen))
    q = Int8Linear.from_linear(linear)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == 127
    # Rounding to the nearest step moves each weight by at most half its row's step.
    step = q.scales.float()[:, None]  # (out, 1)
    assert ((q.dequantized() - linear.weight).abs() <= step / 2 + 1e-6).all()

    x = torch.randn(2, rows, in_features, generator=gen).to(torch.bfloat16)  # (B, T, in)
    want = x.float() @ q.dequantized().T + linear.bias.float()  # (B, T, out)
    got = q(x)
    assert got.shape == (2, rows, 48) and got.dtype == torch.bfloat16
    assert relative_error(got, want) < 1e-2  # bf16 output rounding is ~4e-3


def test_matvec_linear_equals_linear_for_one_row_and_many() -> None:
    linear = nn.Linear(64, 24).to(torch.bfloat16)
    fast = MatVecLinear.from_linear(linear)
    assert fast.weight is linear.weight and fast.bias is linear.bias
    for shape in [(1, 1, 64), (1, 64), (3, 5, 64)]:
        x = torch.randn(shape).to(torch.bfloat16)
        assert relative_error(fast(x), F.linear(x.float(), linear.weight.float(), linear.bias.float())) < 1e-2
        assert fast(x).shape == (*shape[:-1], 24)


@pytest.mark.parametrize(("mode", "tolerance"), [("bf16", 0.015), ("int8", 0.025)])
def test_quantized_logits_stay_close_to_fp32(mode: str, tolerance: float) -> None:
    model = make_model(CONFIG)
    quantized = quantize_model(copy.deepcopy(model), mode)
    ids = torch.tensor([PROMPT, PROMPT[::-1]])  # (B=2, T=7)
    with torch.no_grad():
        want = model(ids)
        # Uncached: all positions at once (GEMM path); measured relative errors are about 0.5% (bf16), 0.7% (int8).
        assert relative_error(quantized(ids), want) < tolerance
        # Cached, one position per step at batch 1: the single-row paths (torch.mv, the fused int8 kernel).
        cache = make_cache(quantized, 1, len(PROMPT))
        steps = [
            quantized(ids[:1, t : t + 1], cache=cache, input_pos=torch.full((1, 1), t)) for t in range(len(PROMPT))
        ]
        assert relative_error(torch.cat(steps, dim=1), want[:1]) < tolerance


@pytest.mark.parametrize("mode", MODES)
def test_greedy_generation_runs_end_to_end_in_every_mode(mode: str) -> None:
    model, successor = successor_model()
    model = quantize_model(model, mode)
    expected = chain(successor, PROMPT[-1], 12)
    assert generate_ids(model, PROMPT, SamplingParams(max_new_tokens=12)) == expected
    assert generate_many(model, [PROMPT, PROMPT[:3]], SamplingParams(max_new_tokens=12)) == [
        expected,
        chain(successor, PROMPT[2], 12),
    ]
    tokenizer = Tokenizer()
    result = generate_text(model, tokenizer.decode(PROMPT), SamplingParams(max_new_tokens=5))
    assert result.token_ids == chain(successor, PROMPT[-1], 5)
    assert result.text == tokenizer.decode(result.token_ids)


@pytest.mark.parametrize("mode", MODES)
def test_modes_keep_the_book_names_and_set_the_cache_dtype(mode: str) -> None:
    model = make_model(CONFIG)
    names = set(model.state_dict())
    quantized = quantize_model(model, mode)
    assert quantized is model  # converted in place
    state = quantized.state_dict()
    assert names <= set(state)
    want_dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    assert make_cache(quantized, 1, 8).keys.dtype == want_dtype
    assert state["trf_blocks.1.norm2.scale"].dtype == want_dtype
    if mode == "int8":
        for layer in (quantized.out_head, quantized.trf_blocks[1].att.W_value, quantized.trf_blocks[0].ff.layers[2]):
            assert isinstance(layer, Int8Linear)
        assert state["trf_blocks.0.att.W_query.weight"].dtype == torch.int8
        assert set(state) - names == {k.removesuffix("weight") + "scales" for k in names if _is_linear_weight(k)}
    else:
        assert set(state) == names
        assert all(isinstance(m, nn.Linear) for m in (quantized.out_head, quantized.trf_blocks[0].att.W_query))


def _is_linear_weight(name: str) -> bool:
    return name.endswith("weight") and not name.startswith(("tok_emb", "pos_emb"))


def test_unknown_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown precision mode 'int4'.*fp32, bf16, int8"):
        quantize_model(make_model(CONFIG), "int4")  # type: ignore[arg-type]


def test_an_int8_model_cannot_be_converted_again() -> None:
    model = quantize_model(make_model(CONFIG), "int8")
    with pytest.raises(ValueError, match="already int8"):
        quantize_model(model, "fp32")


def test_many_rows_in_bf16_meet_a_bounded_number_of_gemm_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN keeps what it builds per GEMM shape: every prompt length would be a new one (and memory kept)."""
    linear = nn.Linear(64, 48)
    int8, matvec = Int8Linear.from_linear(linear), MatVecLinear.from_linear(linear).to(torch.bfloat16)
    shapes: set[tuple[int, ...]] = set()
    real = F.linear

    def recording(x: torch.Tensor, *args: object) -> torch.Tensor:
        shapes.add(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(quantize.F, "linear", recording)
    for rows in range(16, 300):
        x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
        for layer in (int8, matvec):
            expected = real(x.reshape(-1, 64), *_weights(layer)).view(1, rows, 48)
            torch.testing.assert_close(layer(x), expected, rtol=2e-2, atol=2e-2)  # the same rows, in bf16
    long = {shape[0] for shape in shapes if shape[0] > 64}
    assert long == {128, 192, 256, 320}  # prompts: one shape per 64 rows, not one per length
    assert {shape[0] for shape in shapes} - long == set(range(16, 65))  # batches and short prompts as they are


def _weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(layer, Int8Linear):
        return layer.dequantized().to(torch.bfloat16), layer.bias
    return layer.weight, layer.bias
