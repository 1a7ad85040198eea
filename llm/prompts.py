"""The chapter-7 Alpaca prompt template: one definition shared by finetuning and serving, so they cannot drift.

User text is made safe before it enters a template: a line that would open a template section (``### Response:``,
``### Instruction:``, any ``###`` heading) is demoted, so a user cannot forge a section and steer the model into
treating their words as its own answer. End-of-text typed by a user stays plain text because the tokenizer never
encodes special tokens from text.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_HEADER = "\n\n### Instruction:\n"
INPUT_HEADER = "\n\n### Input:\n"
RESPONSE_HEADER = "\n\n### Response:\n"
# A generated answer ends where the model opens a new section.
RESPONSE_STOPS = ("\n###", "###")

_SECTION_LINE = re.compile(r"^([ \t]*)#{3,}", re.MULTILINE)


def neutralize(text: str) -> str:
    """User text with every line-leading ``###`` demoted to ``##`` so it cannot open a template section."""
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
