"""What every adapter shares with the core: typed commands and the summary count they may fetch."""

from __future__ import annotations

import pytest

from bot.core.commands import SUMMARIZE_MAX, parse_command, quote_language, summarize_count, translate_args


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("/summarize 20", ("summarize", "20")), ("/Translate German Hi", ("translate", "German Hi")),
     ("/unknown x", ("chat", "/unknown x")), ("hello /model", ("chat", "hello /model"))],
)  # fmt: skip
def test_a_leading_slash_names_a_command_only_when_the_core_knows_it(typed: str, expected: tuple[str, str]) -> None:
    assert parse_command(typed) == expected


def test_a_summary_count_is_a_whole_number_within_the_limit_adapters_fetch() -> None:
    assert [summarize_count(t) for t in ("1", " 20 ", str(SUMMARIZE_MAX))] == [1, 20, SUMMARIZE_MAX]
    assert [summarize_count(t) for t in ("", "0", "-3", "2.5", "lots", str(SUMMARIZE_MAX + 1), "100000")] == [None] * 7
    # Digits that are not ASCII ("²", "①", Arabic-Indic), and more digits than int() takes: refused, not a crash.
    assert [summarize_count(t) for t in ("²", "①", "\u0665", "9" * 5000, "0" * 10 + "5")] == [None] * 5


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("German Good morning!", ("German", "Good morning!")),
     ('"Brazilian Portuguese" Good morning', ("Brazilian Portuguese", "Good morning")),
     ("“Swiss  German” Grüezi", ("Swiss German", "Grüezi")),
     ('  French   "quoted" text ', ("French", '"quoted" text')),
     ("German\nGuten Morgen,\n  ihr alle", ("German", "Guten Morgen,\n  ihr alle")),
     ("German", None), ("", None), ('"Brazilian Portuguese"', None), ('"Brazilian Portuguese Good morning', None),
     ('"" Hello', None)],
)  # fmt: skip
def test_translate_reads_a_language_then_the_text_and_a_quoted_language_may_have_several_words(
    typed: str, expected: tuple[str, str] | None
) -> None:
    assert translate_args(typed) == expected


def test_a_language_picked_in_a_form_field_travels_in_the_form_translate_reads() -> None:
    for language, read in [("German", "German"), ("Brazilian Portuguese", "Brazilian Portuguese"),
                           (' Swiss  "German" ', "Swiss German"), ("“German", "German")]:  # fmt: skip
        assert translate_args(f"{quote_language(language)} Hello there") == (read, "Hello there")
    for empty in ("", '"', " “” "):  # no language at all: the usage message, not the text's first word
        assert translate_args(f"{quote_language(empty)} Hello there") is None
