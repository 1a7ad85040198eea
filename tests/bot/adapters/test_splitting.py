"""split_message: long answers become messages within a platform's limit, cut where a reader would cut, with code
fences closed and reopened so code stays code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.adapters.splitting import split_message


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
