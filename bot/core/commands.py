"""The commands the core understands and how their arguments are read, wherever they were typed: a slash command's
field, a mention starting with ``/name``, a line in the terminal."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Platforms map their slash commands and shortcuts onto these.
COMMANDS = ("chat", "summarize", "translate", "model", "forget", "reload", "settings", "help")
SUMMARIZE_MAX = 500  # messages a summary may read; adapters read no more than this from a platform
QUOTES = {'"': '"', "“": "”"}  # phones type curly quotes
UNQUOTE = str.maketrans(dict.fromkeys('"“”', " "))


def summarize_count(text: str) -> int | None:
    """The message count typed after ``summarize`` if it is a valid one (1 to SUMMARIZE_MAX), else None."""
    stripped = text.strip()
    # ASCII digits only ("²".isdigit() is True, and int() refuses it), and few of them (int() refuses 4,300 digits).
    if not (stripped.isascii() and stripped.isdecimal()) or len(stripped) > len(str(SUMMARIZE_MAX)):
        return None
    return int(stripped) if 1 <= int(stripped) <= SUMMARIZE_MAX else None


def translate_args(text: str) -> tuple[str, str] | None:
    """``<language> <text>`` -> (language, text), or None when either is missing. A language of several words is
    quoted (``"Brazilian Portuguese" Bom dia``); unquoted, the language is the first word."""
    stripped = text.strip()
    if stripped[:1] in QUOTES:
        language, closed, rest = stripped[1:].partition(QUOTES[stripped[0]])
        if not closed:
            return None
    else:
        language, *after = stripped.split(maxsplit=1) or [""]  # any whitespace ends it: "German\nGuten Morgen"
        rest = after[0] if after else ""
    language, rest = " ".join(language.split()), rest.strip()
    return (language, rest) if language and rest else None


def quote_language(language: str) -> str:
    """The ``translate_args`` form of a language picked in a platform's own form field."""
    words = " ".join(language.translate(UNQUOTE).split())
    return words if words and " " not in words else f'"{words}"'  # '""' (no language) gets the usage message


def parse_command(text: str) -> tuple[str, str]:
    """``/name args`` typed as text (console, a mention starting with a command) -> (command, args);
    anything else is a chat message."""
    stripped = text.strip()
    if stripped.startswith("/"):
        name, _, args = stripped[1:].partition(" ")
        if name.lower() in COMMANDS:
            return name.lower(), args.strip()
    return "chat", text
