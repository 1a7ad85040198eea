"""Parity with Hugging Face `transformers`, an independent GPT-2: same weights, same logits, same greedy tokens.

Weights go both ways through `llm.checkpoints`: our model exported to the Hugging Face layout and opened by
``GPT2LMHeadModel.from_pretrained``, and a ``GPT2LMHeadModel`` saved by ``save_pretrained`` opened by
`load_checkpoint`. Random weights, small sizes, offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm.checkpoints.load import load_checkpoint
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from llm.model import GPTModel
from tests.llm.conftest import make_model

transformers = pytest.importorskip("transformers")

# Four heads of width 8 (not GPT-2's 64): the head count must travel through the files, not be guessed.
CONFIG = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2)
TOKENS = torch.tensor([[5, 17, 42, 3, 96, 0, 11, 64, 8, 30], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])  # (B=2, T=10)


def random_model(config: GPTConfig = CONFIG, *, tied: bool = False) -> GPTModel:
    """`make_model`'s weights scaled up (embeddings x20, other matrices x3): spread logits, clear greedy picks."""
    model = make_model(config, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(20.0 if name.startswith(("tok_emb", "pos_emb")) else 3.0)
        if tied:
            model.out_head.weight.copy_(model.tok_emb.weight)
    return model


def random_hf_model(*, tied: bool) -> transformers.GPT2LMHeadModel:
    """A GPT2LMHeadModel of CONFIG's size with every parameter perturbed (biases and LayerNorms included)."""
    hf_config = transformers.GPT2Config(
        vocab_size=CONFIG.vocab_size,
        n_positions=CONFIG.context_length,
        n_embd=CONFIG.emb_dim,
        n_layer=CONFIG.n_layers,
        n_head=CONFIG.n_heads,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(2)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def our_logits(model: GPTModel, ids: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)  # (B, T, vocab)


def hf_logits(model: transformers.GPT2LMHeadModel, ids: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # (B, T, vocab)


def open_in_transformers(path: Path) -> transformers.GPT2LMHeadModel:
    return transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv-bias", "no-qkv-bias"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_our_model_exported_to_hf_gives_the_same_logits_in_transformers(tmp_path, qkv_bias, tied):
    config = GPTConfig(**{**CONFIG.to_dict(), "qkv_bias": qkv_bias})
    model = random_model(config, tied=tied)
    save_checkpoint(model, tmp_path / "hf", "hf")

    hf = open_in_transformers(tmp_path / "hf")

    expected = our_logits(model)
    assert expected.std() > 0.1  # parity at atol 1e-4 on near-zero logits could not fail
    torch.testing.assert_close(hf_logits(hf), expected, rtol=0, atol=1e-4)
    assert hf.config.tie_word_embeddings is tied


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_transformers_model_loads_with_the_same_logits(tmp_path, tied, weights_file):
    hf = random_hf_model(tied=tied)
    if weights_file == "model.safetensors":
        hf.save_pretrained(tmp_path / "hf")
    else:  # what older transformers wrote: a torch pickle with the head included even when tied
        hf.config.save_pretrained(tmp_path / "hf")
        torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    assert (tmp_path / "hf" / weights_file).exists()

    loaded = load_checkpoint(tmp_path / "hf")

    assert loaded.format == "hf"
    assert loaded.config == CONFIG
    expected = hf_logits(hf)
    assert expected.std() > 0.1
    torch.testing.assert_close(our_logits(loaded.model), expected, rtol=0, atol=1e-4)


def test_greedy_decoding_gives_the_same_tokens_as_transformers_generate(tmp_path):
    model = random_model()
    save_checkpoint(model, tmp_path / "hf", "hf")
    hf = open_in_transformers(tmp_path / "hf")
    prompt = TOKENS[:, :6]  # (B=2, 6)

    ids = prompt
    for _ in range(20):  # the book's uncached loop: rerun the whole sequence, take the argmax
        next_id = our_logits(model, ids)[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, next_id], dim=1)

    with torch.no_grad():
        expected = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=20,
            eos_token_id=None,  # CONFIG's vocabulary has no <|endoftext|>: nothing may stop generation early
            pad_token_id=0,
        )
    assert expected.shape == (2, 26)
    assert ids.tolist() == expected.tolist()
    assert all(len(set(row)) > 5 for row in ids[:, 6:].tolist())  # not one token repeated: that would prove little
