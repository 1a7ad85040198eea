"""Text between Slack and the core: what users wrote, made plain for the model; what the model wrote, made inert for
Slack; and log records with no secrets in them.

Slack's message markup is `&amp;`, `&lt;`, `&gt;` plus `<...>` for links, mentions and broadcasts (`<@U123>`,
`<!channel>`, `<!here>`, `<!subteam^S1>`). Escaping `&`, `<` and `>` in the model's output therefore turns every
mention or broadcast it could produce into visible text: nobody is pinged, whatever the model says. We also post
with `parse=none` and `link_names=false`, so a bare "@here" or "@channel" stays text as well. Markdown-ish
formatting (`*bold*`, code fences) is left alone: it only changes how the answer looks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable

log = logging.getLogger(__name__)

# Slack accepts up to 40,000 characters but advises 4,000 for readable messages; we split a little below that,
# counting the characters as posted (after escaping), so escaping can never push a message over.
MESSAGE_LIMIT = 3_800
# Extra arguments for every message we post or edit: no parsing of names, no link previews of model output.
POST_OPTIONS: dict[str, object] = {"parse": "none", "link_names": False, "unfurl_links": False, "unfurl_media": False}

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# <@U123>, <@U123|name>, <#C123|general>, <!here>, <!subteam^S1|@team>, <https://x|label>, <mailto:a@b>
_MARKUP = re.compile(r"<([@#!]?)([^<>|]*)(?:\|([^<>]*))?>")
_TOKEN = re.compile(r"\bx(?:ox[abposr]|app)-[A-Za-z0-9-]+")
# Every request body carries Slack's legacy verification token, as JSON ("token": "…") or as a form (token=…).
_TOKEN_FIELD = re.compile(r"""(['"]token['"]\s*:\s*['"]|\btoken=)[^'"&\s]+""")
REDACTED = "[redacted]"


def escape(text: str) -> str:
    """Model output as Slack text that shows exactly these characters and can notify nobody."""
    return text.translate(_ESCAPES)


async def escape_stream(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """Escape each delta as it arrives; escaping is per character, so the pieces join to the escaped whole."""
    async for delta in deltas:
        yield escape(delta)


def plain(text: str, *, bot_user_id: str | None = None) -> str:
    """A Slack message as the model should read it: the bot's own mention removed, other markup as readable text
    (`@U123`, `#general`, `@here`, a link's label), entities decoded."""

    def readable(match: re.Match[str]) -> str:
        sigil, target, label = match.group(1), match.group(2), match.group(3)
        if sigil == "@":
            return "" if target == bot_user_id else f"@{label or target}"
        if sigil == "#":
            return f"#{label or target}"
        if sigil == "!":
            return label or f"@{target.split('^')[0]}"
        return label or target

    text = _MARKUP.sub(readable, text)
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return re.sub(r"[ \t]{2,}", " ", text).strip()


class RedactSecrets(logging.Filter):
    """Replace the given secrets, and anything shaped like a Slack token, in every record it sees.

    Bolt logs a rejected request's body at INFO and the SDKs log requests at DEBUG; the tokens travel in headers
    the SDK redacts, but a body or URL is logged as is, so we scrub the formatted message before it is emitted."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Also scrub these values (None and "" are skipped); longest first, so no secret is half-replaced."""
        self._secrets = sorted(set(self._secrets) | {s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _TOKEN_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
        return _TOKEN.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None:
            # Tracebacks of SDK errors repeat request bodies: format now, then scrub.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


# One filter for the process: Bolt copies a base logger's filters into its own loggers once, when they are made,
# so the set of secrets must be shared and grow as adapters are created.
SECRETS = RedactSecrets()
