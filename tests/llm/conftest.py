"""Small random-weight models: the tests never need real GPT-2 weights, a GPU or the network."""

from __future__ import annotations

import pytest
import torch

from llm.config import GPTConfig
from llm.model import GPTModel


def make_model(config: GPTConfig, seed: int = 0) -> GPTModel:
    """A model with GPT-2's initialisation, plus non-trivial norms and biases so no parameter is a no-op."""
    gen = torch.Generator().manual_seed(seed)
    model = GPTModel(config).init_weights(gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("scale", "shift", "bias")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture
def tiny_config() -> GPTConfig:
    # Full GPT-2 vocabulary so real tokenizer ids work; everything else small.
    return GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPTModel:
    return make_model(tiny_config)
