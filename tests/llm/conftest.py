"""Small random-weight models: the tests never need real GPT-2 weights, a GPU or the network."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from llm.config import GPTConfig
from llm.decoding.engine import Engine
from llm.decoding.runs import GenerationResult, TextStream, generate_all
from llm.decoding.sampling import SamplingParams
from llm.model import GPTModel
from llm.tokenizer import Tokenizer


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


# Generation as the library does it, on its one decode loop (the engine), in the shapes tests want.

_TOKENIZER = Tokenizer()


def generate_ids(model: GPTModel, prompt: Sequence[int], params: SamplingParams) -> list[int]:
    """The token ids the library generates for one prompt (end-of-text and stop strings not included)."""
    return generate_many(model, [prompt], params)[0]


def generate_many(model: GPTModel, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[int]]:
    """Several prompts decoded together, one batch."""
    engine = Engine(model, _TOKENIZER, max_batch=max(len(prompts), 1))
    return [result.token_ids for result in generate_all(engine, prompts, params)]


def stream(model: GPTModel, prompt: Sequence[int], params: SamplingParams) -> TextStream:
    """Text deltas for one prompt; ``.result`` afterwards."""
    return TextStream(Engine(model, _TOKENIZER, max_batch=1), prompt, params)


def generated(model: GPTModel, prompt: Sequence[int], params: SamplingParams) -> GenerationResult:
    """The whole answer to one prompt, with how it ran."""
    text = stream(model, prompt, params)
    for _ in text:
        pass
    return text.result


def generate_text(model: GPTModel, prompt: str, params: SamplingParams) -> GenerationResult:
    """The whole answer to a raw prompt string."""
    return generated(model, _TOKENIZER.encode(prompt), params)
