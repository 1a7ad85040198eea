"""Model configuration: the GPT-2 sizes of the book, and a config read back from a checkpoint's tensors."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration asked for by a user (a preset name, a checkpoint's shapes) is not usable."""


class UnknownHeadCountError(ConfigError):
    """A state dict's shapes do not tell its number of attention heads, and nobody said it."""


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary, <|endoftext|> = 50256 included
    context_length: int = 1024  # longest sequence the position embedding covers
    emb_dim: int = 768  # width of the residual stream
    n_heads: int = 12  # attention heads per block; emb_dim must divide by it
    n_layers: int = 12  # transformer blocks
    drop_rate: float = 0.0  # dropout for training; inference never uses it
    qkv_bias: bool = True  # OpenAI's GPT-2 weights have q/k/v biases; the book trains from scratch without

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}")
        if not 0 <= self.drop_rate < 1:
            raise ConfigError(f"drop_rate is a probability from 0 up to (not including) 1, got {self.drop_rate}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset, e.g. ``GPTConfig.from_name("gpt2-medium")``, with optional field overrides."""
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return replace(cls(**PRESETS[key]), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GPTConfig:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)

    def preset_name(self) -> str | None:
        """The preset this config matches in shape (vocabulary, context, width, heads, depth), if any."""
        for name, fields in PRESETS.items():
            if all(getattr(self, k) == v for k, v in fields.items() if k != "qkv_bias"):
                return name
        return None


# The four GPT-2 sizes as the book defines them (chapter 5, `model_configs`).
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12),  # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),  # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),  # 1558M
}
PRESET_ALIASES = {
    "gpt2": "gpt2-small",
    "gpt2-small (124M)": "gpt2-small",
    "gpt2-medium (355M)": "gpt2-medium",
    "gpt2-large (774M)": "gpt2-large",
    "gpt2-xl (1558M)": "gpt2-xl",
    "124M": "gpt2-small",
    "355M": "gpt2-medium",
    "774M": "gpt2-large",
    "1558M": "gpt2-xl",
}

_BLOCK_INDEX = re.compile(r"^trf_blocks\.(\d+)\.")
_GPT2_SHAPE = {"vocab_size": 50257, "context_length": 1024}  # every size OpenAI published has these


def _has_shape(preset: Mapping[str, Any], shape: Mapping[str, int]) -> bool:
    full = {**_GPT2_SHAPE, **preset}
    return all(int(shape[k]) == full[k] for k in shape)


def infer_config(state_dict: Mapping[str, Any], n_heads: int | None = None) -> GPTConfig:
    """Read a `GPTConfig` off the shapes of a state dict in this project's (the book's) parameter names.

    Vocabulary, context length, width, depth and whether q/k/v have biases are all visible in the tensors.
    The number of heads is not (it only splits a matrix, and any divisor of the width fits): it is ``n_heads`` when
    given, else that of the GPT-2 size whose every shape the tensors have (OpenAI's published models, the book's
    `.pth` files), else `UnknownHeadCountError`. A guess would load a different model without a word.
    """
    try:
        vocab_size, emb_dim = state_dict["tok_emb.weight"].shape
        context_length = state_dict["pos_emb.weight"].shape[0]
    except KeyError as missing:
        raise ConfigError(f"not a GPT state dict: tensor {missing} is missing") from None
    layers = {int(m.group(1)) for k in state_dict if (m := _BLOCK_INDEX.match(k))}
    if not layers:
        raise ConfigError("not a GPT state dict: it has no transformer blocks (trf_blocks.N.*)")
    n_layers = max(layers) + 1
    if layers != set(range(n_layers)):
        raise ConfigError(f"transformer blocks are not numbered 0..{n_layers - 1}: {sorted(layers)}")
    if n_heads is None:
        shape = {"vocab_size": vocab_size, "context_length": context_length, "emb_dim": emb_dim, "n_layers": n_layers}
        n_heads = next((p["n_heads"] for p in PRESETS.values() if _has_shape(p, shape)), None)
        if n_heads is None:
            raise UnknownHeadCountError(
                f"its tensors do not tell the number of attention heads (width {emb_dim}, {n_layers} layers, "
                f"context {context_length}: no GPT-2 size), and a wrong guess would change the model"
            )
    qkv_bias = "trf_blocks.0.att.W_query.bias" in state_dict
    return GPTConfig(
        vocab_size=int(vocab_size),
        context_length=int(context_length),
        emb_dim=int(emb_dim),
        n_heads=int(n_heads),
        n_layers=n_layers,
        qkv_bias=qkv_bias,
    )
