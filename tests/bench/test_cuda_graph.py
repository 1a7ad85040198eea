"""The GPU benchmark's own CUDA-graph decode (bench/cuda_graph.py), checked where it can be: on the CPU, its static
step must compute what the model's own step computes, and graphs must be refused off a GPU."""

from __future__ import annotations

import pytest
import torch

from bench.cuda_graph import GraphedDecodeStep, static_decode_step
from llm.config import GPTConfig
from llm.decoding.steps import prefill
from llm.model import GPTModel, KVCache
from tests.llm.conftest import make_model


@pytest.fixture
def tiny_model() -> GPTModel:
    return make_model(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2))


def test_the_static_step_for_cuda_graphs_equals_the_dynamic_one(tiny_model: GPTModel) -> None:
    """The static step attends over the whole cache through a mask and never reads positions back to the host;
    stale or unwritten positions past each row's own must not change a single logit."""
    torch.manual_seed(0)
    prompts = [torch.randint(0, tiny_model.config.vocab_size, (n,)) for n in (5, 9)]
    dynamic, static = KVCache(tiny_model.config, 2, 24), KVCache(tiny_model.config, 2, 24)
    static.keys.normal_()  # garbage everywhere a row has not written yet
    static.values.normal_()
    with torch.inference_mode():
        for row, prompt in enumerate(prompts):
            for cache in (dynamic, static):
                prefill(tiny_model, prompt, cache, slot=row)
        tokens = torch.tensor([1, 2])
        positions = torch.tensor([5, 9])
        for _ in range(4):
            expected = tiny_model(tokens[:, None], cache=dynamic, input_pos=positions[:, None])
            got = static_decode_step(tiny_model, tokens, positions, static)[:, None]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            tokens, positions = expected[:, -1].argmax(-1), positions + 1


def test_cuda_graphs_are_refused_clearly_off_a_gpu(tiny_model: GPTModel) -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedDecodeStep(tiny_model)
