"""GPTModel is the book's architecture with the book's names, and its KV cache changes no number it computes."""

from __future__ import annotations

import pytest
import torch

from llm.config import ConfigError, GPTConfig, infer_config
from llm.model import GPTModel, KVCache
from tests.llm.book_reference import BookGPTModel, generate_text_simple
from tests.llm.conftest import make_model


def book_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """Our state dict plus the book's causal-mask buffers: exactly what the book's code saves."""
    sd = dict(model.state_dict())
    ctx = model.config.context_length
    for i in range(model.config.n_layers):
        sd[f"trf_blocks.{i}.att.mask"] = torch.triu(torch.ones(ctx, ctx), diagonal=1)
    return sd


def test_parameter_names_are_the_books(tiny_config: GPTConfig) -> None:
    ours = set(GPTModel(tiny_config).state_dict())
    book = set(BookGPTModel(tiny_config.to_dict()).state_dict())
    assert ours == {k for k in book if not k.endswith(".att.mask")}
    assert "trf_blocks.1.att.W_query.weight" in ours and "trf_blocks.0.ff.layers.2.bias" in ours
    assert "final_norm.scale" in ours and "out_head.weight" in ours and "out_head.bias" not in ours


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_logits_equal_the_books_reference_model(tiny_config: GPTConfig, qkv_bias: bool) -> None:
    config = GPTConfig(**{**tiny_config.to_dict(), "qkv_bias": qkv_bias})
    ours = make_model(config, seed=1)
    book = BookGPTModel(config.to_dict()).eval()
    book.load_state_dict(book_state_dict(ours), strict=True)
    idx = torch.randint(0, config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), book(idx), atol=1e-5, rtol=1e-5)


def test_uncached_forward_rejects_sequences_longer_than_the_context(tiny_model: GPTModel) -> None:
    idx = torch.zeros(1, tiny_model.config.context_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds the context length"):
        tiny_model(idx)


def test_cached_forward_in_chunks_equals_the_full_forward(tiny_model: GPTModel) -> None:
    idx = torch.randint(0, 50257, (1, 30), generator=torch.Generator().manual_seed(2))
    cache = KVCache(tiny_model.config, batch_size=1)
    with torch.no_grad():
        full = tiny_model(idx)
        pieces = []
        for start, end in [(0, 11), (11, 12), (12, 25), (25, 30)]:
            pos = torch.arange(start, end)[None, :]
            pieces.append(tiny_model(idx[:, start:end], cache=cache, input_pos=pos))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_rows_of_one_cache_advance_independently_and_ignore_stale_entries(tiny_model: GPTModel) -> None:
    """A slot reused for a shorter sequence must not see the longer sequence that was there before."""
    gen = torch.Generator().manual_seed(3)
    long_seq = torch.randint(0, 50257, (1, 40), generator=gen)
    short_a = torch.randint(0, 50257, (1, 7), generator=gen)
    short_b = torch.randint(0, 50257, (1, 12), generator=gen)
    cache = KVCache(tiny_model.config, batch_size=3)
    with torch.no_grad():
        tiny_model(long_seq, cache=cache, input_pos=torch.arange(40)[None], slots=torch.tensor([2]))
        tiny_model(short_a, cache=cache, input_pos=torch.arange(7)[None], slots=torch.tensor([2]))
        tiny_model(short_b, cache=cache, input_pos=torch.arange(12)[None], slots=torch.tensor([0]))
        # One decode step for both rows at their own positions, in one forward pass.
        nxt = torch.tensor([[5], [9]])
        batched = tiny_model(nxt, cache=cache, input_pos=torch.tensor([[7], [12]]), slots=torch.tensor([2, 0]))
        alone_a = tiny_model(torch.cat([short_a, nxt[:1]], dim=1))[:, -1]
        alone_b = tiny_model(torch.cat([short_b, nxt[1:]], dim=1))[:, -1]
    torch.testing.assert_close(batched[0, -1], alone_a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1, -1], alone_b[0], atol=1e-5, rtol=1e-5)


def test_cache_rejects_positions_past_its_end(tiny_model: GPTModel) -> None:
    cache = KVCache(tiny_model.config, batch_size=1, max_len=8)
    with pytest.raises(ValueError, match="past the end of the cache"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=cache, input_pos=torch.tensor([[8]]))


def test_book_greedy_loop_matches_our_cached_generation(tiny_model: GPTModel) -> None:
    from llm.decoding.sampling import SamplingParams
    from tests.llm.conftest import generate_many

    prompt = [464, 3290, 318, 257]
    book_ids = generate_text_simple(tiny_model, torch.tensor([prompt]), 20, tiny_model.config.context_length)
    book_new = book_ids[0, len(prompt) :].tolist()
    ours = generate_many(tiny_model, [prompt], SamplingParams(max_new_tokens=20))[0]
    # The book's loop does not stop at end-of-text; compare up to ours stopping there.
    assert ours == book_new[: len(ours)]
    assert len(ours) == 20 or book_new[len(ours)] == 50256


@pytest.mark.parametrize("preset,params", [("gpt2-small", 124_439_808), ("gpt2-medium", 354_823_168)])
def test_presets_have_the_books_sizes(preset: str, params: int) -> None:
    with torch.device("meta"):
        model = GPTModel(GPTConfig.from_name(preset))
    # The book's count with a separate output head (weight tying would subtract vocab x emb_dim).
    expected_untied = params + model.config.vocab_size * model.config.emb_dim
    assert model.num_parameters == expected_untied


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="gpt2-small, gpt2-medium, gpt2-large, gpt2-xl"):
        GPTConfig.from_name("gpt5")


def test_config_is_inferred_from_tensor_shapes(tiny_config: GPTConfig) -> None:
    for preset in ("gpt2-small", "gpt2-xl"):
        config = GPTConfig.from_name(preset)
        with torch.device("meta"):
            sd = GPTModel(config).state_dict()
        assert infer_config(sd) == config
    no_bias = GPTConfig(**{**tiny_config.to_dict(), "qkv_bias": False})
    assert infer_config(GPTModel(no_bias).state_dict(), n_heads=4) == no_bias


def test_infer_config_explains_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"tok_emb\.weight"):
        infer_config({"wte.weight": torch.zeros(2, 2)})


def test_an_int_seed_initialises_like_a_generator_seeded_with_it() -> None:
    config = GPTConfig(vocab_size=64, context_length=16, emb_dim=16, n_heads=2, n_layers=1)
    by_seed = GPTModel(config).init_weights(7).state_dict()
    by_generator = GPTModel(config).init_weights(torch.Generator().manual_seed(7)).state_dict()
    other = GPTModel(config).init_weights(8).state_dict()
    assert all(torch.equal(by_seed[k], by_generator[k]) for k in by_seed)
    assert not torch.equal(by_seed["tok_emb.weight"], other["tok_emb.weight"])
