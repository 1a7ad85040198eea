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
from collections.abc import AsyncIterator

from bot.adapters.redaction import SecretRedactingFilter, secret_field, secret_path

log = logging.getLogger(__name__)

# Slack accepts up to 40,000 characters but advises 4,000 for readable messages; we split a little below that,
# counting the characters as posted (after escaping), so escaping can never push a message over.
MESSAGE_LIMIT = 3_800
# Extra arguments for every message we post or edit: no parsing of names, no link previews of model output.
POST_OPTIONS: dict[str, object] = {"parse": "none", "link_names": False, "unfurl_links": False, "unfurl_media": False}

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# <@U123>, <@U123|name>, <#C123|general>, <!here>, <!subteam^S1|@team>, <https://x|label>, <mailto:a@b>
_MARKUP = re.compile(r"<([@#!]?)([^<>|]*)(?:\|([^<>]*))?>")
# Bot, user and app-level tokens. Every request body also carries Slack's legacy verification token as a "token"
# field, which the shared filter scrubs in JSON and in forms.
SLACK_TOKEN = re.compile(r"\bx(?:ox[abposr]|app)-[A-Za-z0-9-]+")
# A command's response_url lets anyone post into its channel for half an hour: as good as a token while it lives.
# Its path is the secret, in whatever encoding it is logged (Slack's JSON writes `https:\/\/hooks.slack.com\/...`,
# a form body `https%3A%2F%2Fhooks.slack.com%2F...`); in a payload, the field is scrubbed whatever its host.
RESPONSE_URL = secret_path(r"hooks\.slack\.com/", to_end=True)
RESPONSE_URL_FIELD = secret_field("response_url")


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


# One filter for the process: Bolt copies a base logger's filters into its own loggers once, when they are made,
# so the set of secrets must be shared and grow as adapters are created.
SECRETS = SecretRedactingFilter(patterns=[SLACK_TOKEN, RESPONSE_URL_FIELD, RESPONSE_URL])
