"""How the core gets the model's answer for a channel: its settings fitted to the serving model, the prompt rendered
within the context, the answer streamed to the reply. Chat and the commands that answer (summarize, translate)
share it, so the rules cannot drift apart."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from bot.core.channel_settings import ChannelConfig, ChannelSettings
from bot.core.messages import Incoming, Reply
from bot.inference.generator import Generator
from llm.decoding.sampling import SamplingParams
from llm.prompts import (
    RESPONSE_STOPS,
    Encoder,
    RenderedPrompt,
    Turn,
    clean_response,
    max_new_tokens_limit,
    render_conversation,
)
from storage.records import Generation

log = logging.getLogger(__name__)

# Below this many characters a prompt renders in well under a millisecond: a thread hop would cost more.
INLINE_RENDER_CHARS = 8_000


class Answerer:
    def __init__(
        self,
        generator: Generator,
        encoder: Encoder,
        channel_settings: ChannelSettings,
        defaults: ChannelConfig,
        request_timeout_s: float,
    ) -> None:
        self._generator = generator
        self._encoder = encoder
        self._channel_settings = channel_settings
        self._defaults = defaults
        self._request_timeout_s = request_timeout_s

    def answer_limit(self) -> int:
        """The longest answer (`max_new_tokens`) the serving model's context allows beside a prompt."""
        return max_new_tokens_limit(self._generator.context_length, self._encoder)

    async def config(self, incoming: Incoming) -> ChannelConfig:
        """What a request in the incoming's channel runs with: the service defaults, the channel's settings, and an
        answer length the serving model can hold."""
        stored = await self._channel_settings.get((incoming.platform, incoming.tenant, incoming.channel))
        return self._defaults.with_stored(stored).fitted(self.answer_limit())

    async def render(
        self, instruction: str, config: ChannelConfig, turns: Sequence[Turn] = (), input_text: str = ""
    ) -> RenderedPrompt:
        """The chapter-7 prompt within the context left beside the answer (see `llm.prompts.render_conversation`)."""
        budget = self._generator.context_length - config.max_new_tokens
        size = len(instruction) + len(input_text) + sum(len(t.instruction) + len(t.response) for t in turns)
        if size < INLINE_RENDER_CHARS:
            return render_conversation(self._encoder, instruction, budget, turns, input_text)
        # Long texts take milliseconds to tokenize: keep them off the event loop.
        return await asyncio.to_thread(render_conversation, self._encoder, instruction, budget, turns, input_text)

    async def stream(
        self, incoming: Incoming, prompt: RenderedPrompt, config: ChannelConfig, reply: Reply
    ) -> tuple[str, Generation]:
        """Stream the model's answer to ``reply``; return it as shown (cleaned) and what produced it. The request
        counts against the incoming's tenant's share of the model."""
        params = SamplingParams(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            stop=RESPONSE_STOPS,
        )
        tenant = f"{incoming.platform}:{incoming.tenant}"
        async with self._generator.stream(
            prompt.ids, params, timeout_s=self._request_timeout_s, tenant=tenant
        ) as handle:
            await reply.stream(_strip_leading(handle))
        result = handle.result
        # A model can write a NUL byte; what is stored must be storable (the user saw it already).
        answer = clean_response(result.text).replace("\x00", "\ufffd")
        return answer, Generation(result.model_name, result.model_sha256, config.sampling())


async def _strip_leading(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """The model's deltas without the whitespace it opens with (the answer is shown stripped)."""
    started = False
    async for delta in deltas:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        if delta:
            yield delta
