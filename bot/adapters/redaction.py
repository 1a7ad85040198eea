"""Keep secrets out of log records that a chat SDK writes.

discord.py logs every REST call's URL at DEBUG, and interaction follow-ups and callbacks carry the interaction's
token in the path (``/webhooks/<app>/<token>``, ``/interactions/<id>/<token>/callback``); the gateway logs each
event it receives, and INTERACTION_CREATE carries the token in its JSON. Anyone who reads the log could answer as
the bot for 15 minutes. A filter on the SDK's loggers rewrites each record before any handler sees it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
# A token path segment follows a numeric id; a JSON or repr'd dict names it "token".
_TOKEN_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(/webhooks/\d+/)[^/\s?'\"]+"),
    re.compile(r"(/interactions/\d+/)[^/\s?'\"]+"),
    re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+"""),
)


class SecretRedactingFilter(logging.Filter):
    """Replaces known secrets and token-shaped URL segments in a record's message; never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the SDK's bug; leave the record for logging to report
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _TOKEN_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


def install_redaction(prefix: str, secrets: Iterable[str] = ()) -> SecretRedactingFilter:
    """Attach one filter to the logger ``prefix`` and every logger below it that exists now.

    A logger's filters run only for records created on that logger, not for records its children propagate, so
    each module logger of the SDK needs its own; the SDK's modules are imported (their loggers made) before this
    runs. Installing again replaces the previous filter, so secrets do not pile up across restarts."""
    redactor = SecretRedactingFilter(secrets)
    names = [prefix] + [name for name in logging.Logger.manager.loggerDict if name.startswith(prefix + ".")]
    for name in names:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, SecretRedactingFilter)]:
            logger.removeFilter(old)
        logger.addFilter(redactor)
    return redactor
