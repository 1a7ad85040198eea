"""What the inference worker tracks: one `Request` from acceptance to its outcome, and the `Served` model (its engine
and the requests running on it) it runs on. Plain records; the worker's thread owns them once submitted."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.inference.generator import GenerationHandle, ModelInfo
from llm.decoding.engine import Engine
from llm.decoding.sampling import SamplingParams


@dataclass(eq=False)
class Request:
    """One generation, from acceptance to its outcome."""

    handle: GenerationHandle
    prompt_ids: list[int]
    params: SamplingParams
    timeout_s: float | None
    tenant: str = ""  # whose request (platform:guild): the unit of fair sharing
    accepted_at: float = 0.0  # time.monotonic()
    served: Served | None = None  # the engine it runs on, once admitted
    seq_id: int = 0
    token_ids: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    finished: bool = False  # its outcome is on the way to the handle

    def expired(self, now: float) -> bool:
        return self.timeout_s is not None and now - self.accepted_at > self.timeout_s


@dataclass(eq=False)
class Served:
    """One model's engine and the requests running on it; an old one drains after a reload."""

    engine: Engine
    info: ModelInfo
    requests: dict[int, Request] = field(default_factory=dict)  # by engine sequence id
