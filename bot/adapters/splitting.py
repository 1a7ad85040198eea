"""Split a long answer into messages a platform accepts (Discord: 2,000 characters, Slack: a few thousand).

Cuts fall at the best boundary inside the limit: a paragraph break, else a line break, else the end of a sentence,
else a space; a hard cut only when a stretch has no whitespace at all. A cut inside a code fence closes the fence at
the end of one message and reopens it (with its language) at the start of the next, so every message renders as
code where the answer was code.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

FENCE = "```"
_CLOSE = "\n" + FENCE
# Boundaries in order of preference; the cut swallows the separator the pattern matched.
_BOUNDARIES: tuple[re.Pattern[str], ...] = (
    re.compile(r"\n\s*\n"),  # paragraph
    re.compile(r"\n"),  # line
    re.compile(r"(?<=[.!?…])\s"),  # sentence
    re.compile(r"\s"),  # word
)
# A boundary this early would leave a tiny message; below it we look for a lesser boundary further on.
_MIN_FILL = 0.5


def split_message(text: str, limit: int) -> list[str]:
    """``text`` as messages of at most ``limit`` characters each, in order; [] for blank text."""
    if limit < 20:
        raise ValueError(f"a message limit of {limit} characters is too small to split sensibly (minimum 20)")
    chunks: list[str] = []
    reopen = ""  # the fence line to start the next message with, when a cut fell inside a code block
    rest = text.rstrip().lstrip("\n")  # a cut line keeps its indentation: it may be code
    while rest.strip():
        piece = reopen + rest
        if len(piece) <= limit:
            chunks.append(piece)
            break
        cut, skip = _find_cut(piece, limit - len(_CLOSE), start=len(reopen) + 1)
        chunk = piece[:cut].rstrip()
        rest = piece[cut + skip :].lstrip("\n")
        opener = _open_fence(chunk)
        if opener is not None:
            chunk += _CLOSE
            # A pathological opener line (longer than half a message) is not repeated: the code stays plain text.
            reopen = opener + "\n" if len(opener) < limit // 2 else ""
        else:
            reopen = ""
        if chunk.strip() and chunk.strip() != FENCE:
            chunks.append(chunk)
    return chunks


def _find_cut(piece: str, room: int, *, start: int) -> tuple[int, int]:
    """Where to cut ``piece`` so the part before fits in ``room``: (index, separator length to drop)."""
    window = piece[: room + 1]  # a separator right at the limit still lets the part before fit
    floor = max(start, int(room * _MIN_FILL))
    for pattern in _BOUNDARIES:
        best: re.Match[str] | None = None
        for match in pattern.finditer(window, start):
            if match.start() > room:
                break
            best = match
        if best is not None and best.start() >= floor:
            return best.start(), len(best.group(0))
    # No good boundary in the upper half: take any boundary at all before a hard cut mid-word.
    for pattern in _BOUNDARIES:
        matches = [m for m in pattern.finditer(window, start) if m.start() <= room]
        if matches:
            return matches[-1].start(), len(matches[-1].group(0))
    return max(room, start), 0


def _open_fence(chunk: str) -> str | None:
    """The opening line of the code fence still open at the end of ``chunk``, or None when all are closed."""
    opener: str | None = None
    for line in chunk.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            opener = None if opener is not None else stripped
    return opener
