"""The chapter-7 Alpaca prompt template: one definition shared by finetuning and serving, so they cannot drift.

User text is made safe before it enters a template: a line that would open a template section (``### Response:``,
``### Instruction:``, any ``###`` heading) is demoted, so a user cannot forge a section and steer the model into
treating their words as its own answer. End-of-text typed by a user stays plain text because the tokenizer never
encodes special tokens from text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
INSTRUCTION_HEADER = "\n\n### Instruction:\n"
INPUT_HEADER = "\n\n### Input:\n"
RESPONSE_HEADER = "\n\n### Response:\n"
# A generated answer ends where the model opens a new section.
RESPONSE_STOPS = ("\n###", "###")

# Every character that ends a line somewhere: what str.splitlines() splits on, not only "\n". A tokenizer, a model or
# a later reader may take any of them for a line break.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
# What may stand invisibly between a line break and "###": any Unicode space (\s: tabs, no-break and ideographic
# spaces, ...) and every format character (Unicode category Cf: zero-width spaces and joiners, bidirectional marks,
# the BOM, soft hyphen, tags, ...), listed by range as of Unicode 14.
_INVISIBLE = (
    r"\s\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    r"\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_SECTION_LINE = re.compile(rf"(?:\A|(?<=[{LINE_BREAKS}]))([{_INVISIBLE}]*)#{{3,}}")


def neutralize(text: str) -> str:
    """User text with every ``###`` that opens a line (after any line break and any invisible spacing) demoted to
    ``##``, so it cannot open a template section."""
    return _SECTION_LINE.sub(r"\1##", text)


def format_input(instruction: str, input_text: str = "") -> str:
    """The book's ``format_input``: preamble, instruction, and the input section only when there is input."""
    text = PREAMBLE + INSTRUCTION_HEADER + neutralize(instruction)
    if input_text:
        text += INPUT_HEADER + neutralize(input_text)
    return text


def render_prompt(instruction: str, input_text: str = "") -> str:
    """A prompt for inference: the formatted input followed by the response header the model continues from."""
    return format_input(instruction, input_text) + RESPONSE_HEADER


def render_example(instruction: str, input_text: str, output: str) -> str:
    """A whole training example, exactly as chapter 7 builds it: formatted input + response header + output."""
    return format_input(instruction, input_text) + RESPONSE_HEADER + output


def clean_response(text: str) -> str:
    """The answer as shown to a user: cut at a new section (if the stop strings did not already) and stripped."""
    for stop in RESPONSE_STOPS:
        at = text.find(stop)
        if at != -1:
            text = text[:at]
    return text.strip()


# ---------------------------------------------------------------------------------------------------------------
# Prompts inside a token budget


TRUNCATION_MARKER = " […message cut to fit…]"
# Room a prompt keeps for the user's own words, whatever the answer's length asks for: less would cut every message
# to a few words, and an answer to nothing is not an answer.
MIN_MESSAGE_TOKENS = 32


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of a conversation: what the user asked and what the bot answered."""

    instruction: str
    response: str


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    ids: list[int]
    kept_turns: int  # earlier turns that fit, newest first
    dropped_turns: int  # earlier turns left out for the budget, oldest first
    truncated: bool  # the newest instruction or input was cut, with TRUNCATION_MARKER


def template_tokens(encoder: Encoder, instruction: str = "", input_text: str = "") -> int:
    """Tokens of a single-turn prompt: the template (preamble, sections) around ``instruction`` and ``input_text``.
    With both empty it is the template alone, with an input section, as the longest template prompts use."""
    return len(encoder.encode(PREAMBLE + _final_text(instruction, input_text or " ")))


def min_prompt_tokens(encoder: Encoder) -> int:
    """The smallest prompt worth sending: the template and room for a short message."""
    return template_tokens(encoder) + MIN_MESSAGE_TOKENS


def max_new_tokens_limit(context_length: int, encoder: Encoder, *, raw: bool = False) -> int:
    """The largest answer length a model of ``context_length`` can serve while keeping `min_prompt_tokens` for the
    prompt (``raw``: a prompt sent without the template keeps MIN_MESSAGE_TOKENS). A `max_new_tokens` above it would
    leave every prompt cut to almost nothing; below 1, the model is too small."""
    return context_length - (MIN_MESSAGE_TOKENS if raw else min_prompt_tokens(encoder))


def answer_length_problem(
    max_new_tokens: int, context_length: int, encoder: Encoder, *, raw: bool = False
) -> str | None:
    """Why answers of ``max_new_tokens`` tokens cannot be served by a model of ``context_length``, or None when they
    can: the one rule for every place an answer length is set (a flag, a setting, a channel's setting, a reload)."""
    limit = max_new_tokens_limit(context_length, encoder, raw=raw)
    prompt = (
        f"the {MIN_MESSAGE_TOKENS} tokens always kept for the prompt"
        if raw
        else f"the prompt template and a short message ({min_prompt_tokens(encoder)} tokens)"
    )
    if limit < 1:
        return f"a context of {context_length} tokens is too short for {prompt}"
    if max_new_tokens > limit:
        return f"a context of {context_length} tokens holds at most {limit} new tokens beside {prompt}"
    return None


def _turn_text(turn: Turn) -> str:
    return INSTRUCTION_HEADER + neutralize(turn.instruction) + RESPONSE_HEADER + neutralize(turn.response)


def _final_text(instruction: str, input_text: str) -> str:
    text = INSTRUCTION_HEADER + neutralize(instruction)
    if input_text:
        text += INPUT_HEADER + neutralize(input_text)
    return text + RESPONSE_HEADER


def render_conversation(
    encoder: Encoder,
    instruction: str,
    budget: int,
    history: Sequence[Turn] = (),
    input_text: str = "",
) -> RenderedPrompt:
    """The newest instruction (and input) as the final Alpaca section, earlier turns before it, within ``budget``
    tokens. The preamble and the newest message are always kept (an over-long one is cut with a visible marker);
    earlier turns are kept newest first, and the oldest are dropped first."""
    fixed = len(encoder.encode(PREAMBLE + RESPONSE_HEADER))
    if budget <= fixed + 8:
        raise ValueError(f"a budget of {budget} tokens cannot hold the prompt template ({fixed} tokens) and a message")
    instruction, input_text, truncated = _fit_newest(encoder, instruction, input_text, budget)
    final = _final_text(instruction, input_text)
    used = len(encoder.encode(PREAMBLE + final))
    kept: list[str] = []
    for turn in reversed(history):
        piece = _turn_text(turn)
        cost = len(encoder.encode(piece))
        if used + cost > budget:
            break
        kept.append(piece)
        used += cost
    while True:
        text = PREAMBLE + "".join(reversed(kept)) + final
        ids = encoder.encode(text)
        # Pieces were counted one by one; BPE at their seams may differ by a token, so check the whole.
        if len(ids) <= budget or not kept:
            break
        kept.pop()
    return RenderedPrompt(text, ids, len(kept), len(history) - len(kept), truncated)


def _fit_newest(encoder: Encoder, instruction: str, input_text: str, budget: int) -> tuple[str, str, bool]:
    """Cut the input (first) or the instruction so the preamble plus the final section fit ``budget``."""

    def size(ins: str, inp: str) -> int:
        return len(encoder.encode(PREAMBLE + _final_text(ins, inp)))

    if size(instruction, input_text) <= budget:
        return instruction, input_text, False
    if input_text:
        room = budget - size(instruction, "x" + TRUNCATION_MARKER)
        if room > 0:
            return instruction, _cut(encoder, input_text, room), True
        input_text = ""
    room = budget - size("x" + TRUNCATION_MARKER, "")
    return _cut(encoder, instruction, room), input_text, True


def _cut(encoder: Encoder, text: str, tokens: int) -> str:
    """The start of ``text`` in about ``tokens`` tokens, then the marker; cut on a character boundary."""
    lo, hi = 0, len(text)
    # Binary search on characters: decoding a token prefix could split a multi-byte character.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encoder.encode(text[:mid])) <= max(tokens, 1):
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + TRUNCATION_MARKER
