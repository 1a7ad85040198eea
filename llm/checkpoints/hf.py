"""The Hugging Face GPT-2 layout and the book's names side by side: one table, one list of transposed weights.

Hugging Face's ``GPT2LMHeadModel`` (and every engine that serves GPT-2: vLLM, TGI, llama.cpp's converter) stores
the same numbers as the book's ``GPTModel`` under other names, with two twists: q, k and v live in one fused
``c_attn`` matrix, and its projections are ``Conv1D`` layers whose weights are ``(in, out)`` where ``nn.Linear``'s
are ``(out, in)``. Both conversions below are exact (splits, concatenations and transposes only), so a round trip
is bit-for-bit. Shapes are checked by the caller against a model built from the config, in one place
(`llm.checkpoints.common.check_tensors`). The table is applied by `llm.checkpoints.names`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch

from llm.checkpoints.names import NameTable, from_book, to_book
from llm.config import GPTConfig

log = logging.getLogger(__name__)

HF = NameTable(
    to_book={
        "wte.weight": "tok_emb.weight",
        "wpe.weight": "pos_emb.weight",
        "h.{n}.ln_1.weight": "trf_blocks.{n}.norm1.scale",
        "h.{n}.ln_1.bias": "trf_blocks.{n}.norm1.shift",
        "h.{n}.attn.c_attn.weight": (
            "trf_blocks.{n}.att.W_query.weight",
            "trf_blocks.{n}.att.W_key.weight",
            "trf_blocks.{n}.att.W_value.weight",
        ),
        "h.{n}.attn.c_attn.bias": (
            "trf_blocks.{n}.att.W_query.bias",
            "trf_blocks.{n}.att.W_key.bias",
            "trf_blocks.{n}.att.W_value.bias",
        ),
        "h.{n}.attn.c_proj.weight": "trf_blocks.{n}.att.out_proj.weight",
        "h.{n}.attn.c_proj.bias": "trf_blocks.{n}.att.out_proj.bias",
        "h.{n}.ln_2.weight": "trf_blocks.{n}.norm2.scale",
        "h.{n}.ln_2.bias": "trf_blocks.{n}.norm2.shift",
        "h.{n}.mlp.c_fc.weight": "trf_blocks.{n}.ff.layers.0.weight",
        "h.{n}.mlp.c_fc.bias": "trf_blocks.{n}.ff.layers.0.bias",
        "h.{n}.mlp.c_proj.weight": "trf_blocks.{n}.ff.layers.2.weight",
        "h.{n}.mlp.c_proj.bias": "trf_blocks.{n}.ff.layers.2.bias",
        "ln_f.weight": "final_norm.scale",
        "ln_f.bias": "final_norm.shift",
        "lm_head.weight": "out_head.weight",  # absent when tied to wte (tie_word_embeddings)
    },
    # Conv1D weights, stored (in, out).
    transposed=frozenset(
        {"h.{n}.attn.c_attn.weight", "h.{n}.attn.c_proj.weight", "h.{n}.mlp.c_fc.weight", "h.{n}.mlp.c_proj.weight"}
    ),
    block=re.compile(r"^h\.(\d+)\."),
)

# Constant causal-mask buffers that older transformers versions saved; they hold nothing learned.
IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")

# `GPT2LMHeadModel` keeps the body under this prefix; `GPT2Model` checkpoints have none. The head never has it.
BODY_PREFIX = "transformer."


def is_hf_layout(keys: Any) -> bool:
    return "wte.weight" in keys or BODY_PREFIX + "wte.weight" in keys


def hf_to_book(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors in the book's names from Hugging Face GPT-2 tensors; also book name -> the HF name it came from.

    Names the table does not know are passed through unchanged, so the caller's check reports them as unexpected.
    A missing ``lm_head.weight`` means the head is tied to ``wte``: both names then hold the same tensor.
    """
    body = {k.removeprefix(BODY_PREFIX): v for k, v in state_dict.items()}
    hf = {k: v for k, v in body.items() if not IGNORED.match(k)}
    book, origin, unknown = to_book(HF, hf, lambda name, _: hf[name])
    if "out_head.weight" not in book and "tok_emb.weight" in book:
        book["out_head.weight"] = book["tok_emb.weight"]  # tied head
        origin["out_head.weight"] = "wte.weight (tied)"
    book.update({name: hf[name] for name in unknown})  # reported by the caller
    return book, origin


def book_to_hf(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> tuple[dict[str, torch.Tensor], bool]:
    """`GPT2LMHeadModel` tensors (``transformer.``-prefixed, as ``save_pretrained`` writes them) and whether tied.

    The head is left out (tied) only when it equals the token embedding exactly. Without q/k/v biases
    (``qkv_bias=False``) zero biases are written: GPT-2 always has them, and adding zero changes nothing.
    """
    tied = bool(torch.equal(state_dict["tok_emb.weight"], state_dict["out_head.weight"]))

    def tensor_for(name: str) -> torch.Tensor:
        return state_dict[name] if name in state_dict else _zero_bias(name, state_dict)

    tensors = from_book(HF, config.n_layers, tensor_for)
    out = {name if name == "lm_head.weight" else BODY_PREFIX + name: t for name, t in tensors.items()}
    if tied:
        del out["lm_head.weight"]
    return out, tied


def _zero_bias(name: str, state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if not name.endswith(("W_query.bias", "W_key.bias", "W_value.bias")):
        raise KeyError(name)
    weight = state_dict[name.removesuffix("bias") + "weight"]  # (out, in)
    return torch.zeros(weight.shape[0], dtype=weight.dtype)


def hf_config_json(config: GPTConfig, *, tied: bool, dtype: torch.dtype) -> dict[str, Any]:
    """The ``config.json`` of a `GPT2LMHeadModel` with the book's architecture (GPT-2's own field names)."""
    eos = 50256 if config.vocab_size > 50256 else None  # <|endoftext|>, when the vocabulary has it
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.emb_dim,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": None,  # 4 * n_embd, as the book's FeedForward
        "activation_function": "gelu_new",  # GELU, tanh approximation
        "layer_norm_epsilon": 1e-5,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "resid_pdrop": config.drop_rate,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": tied,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def check_hf_config(data: Mapping[str, Any]) -> list[str]:
    """What in a Hugging Face ``config.json`` the book's architecture cannot compute; empty when all is well."""
    problems = []
    if data.get("model_type", "gpt2") != "gpt2":
        problems.append(f"model_type is {data['model_type']!r}, not 'gpt2'")
    if data.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function is {data['activation_function']!r}, not GELU-tanh ('gelu_new')")
    if data.get("n_inner") not in (None, 4 * data.get("n_embd", 0)):
        problems.append(f"n_inner is {data['n_inner']}, not 4 * n_embd")
    if data.get("layer_norm_epsilon", 1e-5) != 1e-5:
        problems.append(f"layer_norm_epsilon is {data['layer_norm_epsilon']}, not 1e-5")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if data.get(flag):
            problems.append(f"{flag} is set")
    if data.get("scale_attn_weights", True) is False:
        problems.append("scale_attn_weights is off")
    return problems
