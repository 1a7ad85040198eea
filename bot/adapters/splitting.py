"""Split a long answer into messages a platform accepts (Discord: 2,000 characters, Slack: a few thousand).

Cuts fall at the best boundary inside the limit: a paragraph break, else a line break, else the end of a sentence,
else a space; a hard cut only when a stretch has no whitespace at all. A hard cut never falls inside an HTML-style
entity (`&amp;`, `&#128512;`: Slack's text is escaped before it is split, and half an entity shows as garbage) nor
inside what a reader sees as one character: a letter and its combining marks, an emoji joined with U+200D or
followed by a variation selector or skin tone, a flag's pair of regional indicators. A cut inside a code fence
closes the fence at the end of one message and reopens it (with its language) at the start of the next, so every
message renders as code where the answer was code.
"""

from __future__ import annotations

import logging
import re
import unicodedata

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
# `&name;`, `&#123;`, `&#x1F600;`. Names are bounded (the longest HTML5 name has 31 characters) so that a lone `&`
# followed by a long word is not taken for one.
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_ENTITY_MAX = 34
_ZWJ = "\u200d"


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
    return _unbroken(piece, max(room, start), start), 0


def _unbroken(piece: str, cut: int, start: int) -> int:
    """``cut``, moved back to the start of an entity or a character cluster it would split; unchanged when that
    would leave nothing before it (an entity or cluster longer than a whole message has to be cut)."""
    safe = cut
    while safe > start and _splits(piece, safe):
        safe -= 1
    return safe if safe > start or not _splits(piece, safe) else cut


def _splits(piece: str, at: int) -> bool:
    """Whether cutting ``piece`` before index ``at`` splits an entity or what a reader sees as one character."""
    if at <= 0 or at >= len(piece):
        return False
    for match in _ENTITY.finditer(piece, max(0, at - _ENTITY_MAX), at + _ENTITY_MAX):
        if match.start() < at < match.end():
            return True
    before, after = piece[at - 1], piece[at]
    if _ZWJ in (before, after) or _extends(after):
        return True
    if _regional(before) and _regional(after):  # flags are pairs: cut after an even run of indicators only
        run = 0
        while at - run - 1 >= 0 and _regional(piece[at - run - 1]):
            run += 1
        return run % 2 == 1
    return False


def _extends(char: str) -> bool:
    """A character that belongs to the one before it: a combining mark, a variation selector, a skin tone, a tag."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")  # combining marks, the keycap; variation selectors are Mn
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin tones
        or 0xE0020 <= code <= 0xE007F  # tags: the subdivision flags (England, Scotland, Wales)
    )


def _regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _open_fence(chunk: str) -> str | None:
    """The opening line of the code fence still open at the end of ``chunk``, or None when all are closed."""
    opener: str | None = None
    for line in chunk.split("\n"):
        stripped = line.strip()
        if stripped.startswith(FENCE):
            opener = None if opener is not None else stripped
    return opener
