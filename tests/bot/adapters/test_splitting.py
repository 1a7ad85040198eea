"""split_message: long answers become messages within a platform's limit, cut where a reader would cut, with code
fences closed and reopened so code stays code, and never through an entity or a character a reader sees as one."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.adapters.splitting import split_message
from bot.adapters.streaming import CURSOR, StreamedMessages

ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);")
ENTITIES = ["&amp;", "&lt;", "&gt;", "&quot;", "&#128512;", "&#x1F600;", "&nbsp;"]
# What a reader sees as one character though it is several code points.
CLUSTERS = [
    "e\u0301",  # e and a combining acute accent
    "a\u0308\u0323",  # two combining marks
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a family: three emoji joined by ZWJ
    "\u2764\ufe0f",  # a heart with the emoji variation selector
    "\U0001f44d\U0001f3fd",  # thumbs up, medium skin tone
    "\U0001f1fa\U0001f1f8",  # a flag: two regional indicators
    "1\ufe0f\u20e3",  # keycap 1
    "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",  # England: a tag sequence
]


def fences_balanced(chunk: str) -> bool:
    return sum(1 for line in chunk.split("\n") if line.strip().startswith("```")) % 2 == 0


def test_short_text_is_one_message_and_blank_text_is_none() -> None:
    assert split_message("Hello there.", 2000) == ["Hello there."]
    assert split_message("  \n\n ", 2000) == []


def test_cuts_at_a_paragraph_break_before_a_sentence_or_a_word() -> None:
    first = "A" * 50 + ". " + "b" * 20 + "\n\n"
    text = first + "Second paragraph " * 10
    chunks = split_message(text, 100)
    assert chunks[0] == first.strip()
    assert "".join(chunks).replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_prefers_a_sentence_end_to_a_space() -> None:
    text = "This is one sentence. " * 6 + "word " * 30
    chunks = split_message(text, 120)
    assert all(len(c) <= 120 for c in chunks)
    assert chunks[0].endswith(".")


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    chunks = split_message("x" * 250, 100)
    assert [len(c) for c in chunks] == [96, 96, 58]  # room for a fence closer is always kept
    assert "".join(chunks) == "x" * 250


def test_a_cut_inside_a_code_block_closes_and_reopens_the_fence_with_its_language() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(60))
    text = "Here is the code:\n\n```python\n" + code + "\n```\n\nThat prints the numbers."
    chunks = split_message(text, 400)
    assert len(chunks) > 2
    assert all(len(c) <= 400 for c in chunks)
    assert all(fences_balanced(c) for c in chunks)
    assert all(c.startswith("```python\n") for c in chunks[1:-1])
    joined = "\n".join(chunks)
    for i in range(60):
        assert f"print({i})  # line {i}" in joined  # nothing lost


def test_five_thousand_characters_make_ordered_chunks_within_discords_limit() -> None:
    sentences = [f"Sentence number {i} says something useful." for i in range(120)]
    text = " ".join(sentences)
    chunks = split_message(text, 2000)
    assert len(chunks) == 3
    assert all(len(c) <= 2000 for c in chunks)
    assert " ".join(chunks) == text


def test_a_limit_too_small_to_split_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="too small"):
        split_message("text", 5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="abc .!?\n", min_size=0, max_size=120),
            st.sampled_from(["\n```\n", "\n```py\n", "\n\n"]),  # fences are lines of their own, as in markdown
        ),
        max_size=40,
    ),
    st.integers(min_value=40, max_value=300),
)
def test_every_chunk_fits_and_no_word_is_lost(parts: list[str], limit: int) -> None:
    text = "".join(parts)
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)
    assert all(c.strip() for c in chunks)
    # Every character outside fence lines arrives, in order (fence lines are repeated to reopen, never lost).
    assert prose(chunks) == prose([text])
    assert all(fences_balanced(c) for c in chunks) or not fences_balanced(text)


def prose(chunks: list[str]) -> list[str]:
    lines = [line for chunk in chunks for line in chunk.split("\n") if not line.strip().startswith("```")]
    return [ch for line in lines for ch in line if not ch.isspace()]


def cuts(chunks: list[str]) -> set[int]:
    """Where the text was cut, as indices into it, for chunks that join back to it exactly."""
    return set(accumulate(len(c) for c in chunks[:-1]))


@pytest.mark.parametrize("entity", ENTITIES)
def test_a_hard_cut_never_falls_inside_an_entity(entity: str) -> None:
    for before in range(90, 100):  # the entity straddles the cut at 96 in every way it can
        text = "x" * before + entity + "y" * 60
        chunks = split_message(text, 100)
        assert "".join(chunks) == text
        assert all(len(c) <= 100 for c in chunks)
        assert sum(len(ENTITY.findall(c)) for c in chunks) == 1, chunks


@pytest.mark.parametrize("cluster", CLUSTERS, ids=[ascii(c) for c in CLUSTERS])
def test_a_hard_cut_never_splits_what_a_reader_sees_as_one_character(cluster: str) -> None:
    for before in range(85, 100):
        text = "x" * before + cluster + "y" * 60
        chunks = split_message(text, 100)
        assert "".join(chunks) == text
        start = text.index(cluster)
        assert not any(start < cut < start + len(cluster) for cut in cuts(chunks)), chunks


def test_a_run_of_flags_is_cut_between_flags() -> None:
    flags = "\U0001f1fa\U0001f1f8\U0001f1eb\U0001f1f7" * 40  # US, France, ...: pairs, however long the run
    chunks = split_message("x" + flags, 100)
    assert "".join(chunks) == "x" + flags
    assert all(cut % 2 == 1 for cut in cuts(chunks))  # after the x, every cut is after a whole pair


def test_a_cluster_longer_than_a_message_is_still_cut() -> None:
    zalgo = "z" + "\u0301" * 250  # nothing to keep whole: the text must still arrive, within the limit
    chunks = split_message(zalgo, 100)
    assert "".join(chunks) == zalgo and all(len(c) <= 100 for c in chunks)


def test_a_lone_ampersand_is_no_entity() -> None:
    text = "x" * 95 + "&" + "y" * 60  # `&yyy...` without a `;` is text: the cut stays where it would be
    assert [len(c) for c in split_message(text, 100)] == [96, 60]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.sampled_from(ENTITIES + CLUSTERS), st.text(alphabet="ab;#", min_size=1, max_size=30))),
    st.integers(min_value=20, max_value=120),
)
def test_hard_cuts_fall_only_between_entities_and_characters(atoms: list[str], limit: int) -> None:
    text = "".join(atoms)
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)
    assert "".join(chunks) == text  # no whitespace: every cut is a hard cut, and nothing is dropped
    allowed = set(accumulate(len(a) for a in atoms))  # where one atom ends and the next begins
    at = 0
    for atom in atoms:
        if atom not in ENTITIES + CLUSTERS:  # plain text: a cut anywhere inside it is fine
            allowed |= set(range(at, at + len(atom)))
        at += len(atom)
    assert cuts(chunks) <= allowed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(ENTITIES + CLUSTERS),
            st.text(alphabet="ab", max_size=40),
            st.sampled_from([" ", "\n", ". ", "\n\n"]),  # separators between stretches, which may be long
        ),
        max_size=60,
    ),
    st.integers(min_value=20, max_value=80),
)
def test_no_entity_is_lost_to_a_cut_wherever_the_whitespace_is(atoms: list[str], limit: int) -> None:
    text = "".join(atoms)
    chunks = split_message(text, limit)
    assert all(len(c) <= limit for c in chunks)
    assert prose(chunks) == prose([text])
    assert sum(len(ENTITY.findall(c)) for c in chunks) == len(ENTITY.findall(text))


class Messages:
    """A channel for StreamedMessages: every text it was shown, each time, and what it shows now."""

    def __init__(self) -> None:
        self.shown: dict[int, str] = {}
        self.every_text: list[str] = []

    async def post(self, text: str) -> int:
        self.shown[len(self.shown)] = text
        self.every_text.append(text)
        return len(self.shown) - 1

    async def edit(self, handle: int, text: str) -> None:
        self.shown[handle] = text
        self.every_text.append(text)


async def test_a_streamed_answer_never_shows_a_broken_entity_on_the_way() -> None:
    # Slack escapes each delta before it is streamed, so the text grows by whole entities; a long word of them
    # is hard-cut again at every sync, as the text grows.
    deltas = ["Tom&amp;Jerry&lt;3&gt;" for _ in range(40)]

    async def stream() -> AsyncIterator[str]:
        for delta in deltas:
            yield delta

    channel = Messages()
    streamed = StreamedMessages(channel, limit=100, interval_s=0.0, clock=lambda: 0.0)
    assert await streamed.run(stream()) == "".join(deltas)
    assert "".join(channel.shown[i] for i in sorted(channel.shown)) == "".join(deltas)
    for text in channel.every_text:  # every message as it was posted or edited, at every step of the stream
        body = text.removesuffix(CURSOR)
        whole = len(ENTITY.findall(body))
        assert body.count("&") == whole and body.count(";") == whole, body  # no entity's head or tail alone
