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
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(f"emb_dim {self.emb_dim} is not divisible by n_heads {self.n_heads}")
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

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

# Head width of every GPT-2 size is 64; a checkpoint does not record n_heads, so it is inferred from this.
GPT2_HEAD_DIM = 64

_BLOCK_INDEX = re.compile(r"^trf_blocks\.(\d+)\.")


def infer_config(state_dict: Mapping[str, Any], n_heads: int | None = None) -> GPTConfig:
    """Read a `GPTConfig` off the shapes of a state dict in this project's (the book's) parameter names.

    Vocabulary, context length, width, depth and whether q/k/v have biases are all visible in the tensors.
    The number of heads is not (it only splits a matrix); it is taken from ``n_heads`` when given, else from the
    preset of the same width, else from GPT-2's head width of 64.
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
        same_width = [p["n_heads"] for p in PRESETS.values() if p["emb_dim"] == emb_dim]
        n_heads = same_width[0] if same_width else max(1, emb_dim // GPT2_HEAD_DIM)
        if emb_dim % n_heads != 0:
            raise ConfigError(f"cannot infer the number of heads for width {emb_dim}; pass n_heads explicitly")
    qkv_bias = "trf_blocks.0.att.W_query.bias" in state_dict
    return GPTConfig(
        vocab_size=int(vocab_size),
        context_length=int(context_length),
        emb_dim=int(emb_dim),
        n_heads=int(n_heads),
        n_layers=n_layers,
        qkv_bias=qkv_bias,
    )
