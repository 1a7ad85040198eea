"""Keep secrets out of the log records a chat SDK writes.

discord.py logs every REST call's URL at DEBUG, and interaction follow-ups and callbacks carry the interaction's
token in the path; its gateway logs INTERACTION_CREATE with the token in the JSON. Bolt logs a rejected request's
body (Slack's verification token included) at INFO. Anyone who reads such a log could act as the bot. A filter on
the SDK's loggers rewrites each record, its traceback too, before any handler sees it. What to scrub is the
configured secrets plus token-shaped text: each adapter passes the patterns its platform's tokens have.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
# A field named "token" in logged JSON, a repr'd dict or a form body. Group 1 is kept: it shows what was redacted.
TOKEN_FIELD = re.compile(r"""(['"]token['"]\s*:\s*['"]|\btoken=)[^'"&\s]+""")


class SecretRedactingFilter(logging.Filter):
    """Replaces known secrets and text matching ``patterns`` in a record's message; never drops a record. A pattern
    with a group keeps group 1 (a URL prefix, a field name) and redacts the rest of its match."""

    def __init__(self, secrets: Iterable[str | None] = (), patterns: Iterable[re.Pattern[str]] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self._patterns = (TOKEN_FIELD, *patterns)
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Also scrub these values (None and "" are skipped); longest first, so no secret is half-replaced."""
        self._secrets = sorted(set(self._secrets) | {s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in self._patterns:
            text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the SDK's bug; leave the record for logging to report
            return True
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None:
            # Tracebacks of SDK errors repeat request URLs and bodies: format now, then scrub.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install_redaction(prefix: str, redactor: SecretRedactingFilter) -> None:
    """Attach ``redactor`` to the logger ``prefix`` and every logger below it that exists now.

    A logger's filters run only for records created on that logger, not for records its children propagate, so
    each module logger of the SDK needs its own; the SDK's modules are imported (their loggers made) before this
    runs. Installing again replaces the previous redactor, so secrets do not pile up across restarts."""
    names = [prefix] + [name for name in logging.Logger.manager.loggerDict if name.startswith(prefix + ".")]
    for name in names:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, SecretRedactingFilter)]:
            logger.removeFilter(old)
        logger.addFilter(redactor)
