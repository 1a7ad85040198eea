"""Keep secrets out of log records, whatever logger writes them and however the secret is encoded.

discord.py logs every REST call's URL at DEBUG, and interaction follow-ups and callbacks carry the interaction's
token in the path; its gateway logs INTERACTION_CREATE with the token in the JSON. Bolt logs a rejected request's
body (Slack's verification token and the command's response_url included) at INFO; the Socket Mode client logs
every envelope at DEBUG; the webhook client behind `respond` logs each response_url. Anyone who reads such a log
could act as the bot. And a secret does not stay in the SDK's own records: aiohttp puts a request's URL in some
exceptions' messages, which reach the core and are logged there with their tracebacks.

So redaction is process-wide: every record any logger makes, its traceback too, is rewritten as it is created,
before any handler (or filter, or test's capture) sees it. What to scrub is the configured secrets plus
credential-shaped text: each adapter passes the patterns its platform's credentials have, built here so that they
match every form a log shows them in. Slack's JSON writes `/` as `\\/`, a repr'd JSON string doubles that
backslash, a form body URL-encodes (`%2F`), and an interactive payload is JSON inside a form (`%5C%2F`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 3


def written(char: str) -> str:
    """A regex for ``char`` as a log line may show it: itself, backslash-escaped (once per level of JSON nesting,
    doubled by a repr), URL-encoded, or URL-encoded after JSON escaping."""
    high, low = f"{ord(char):02X}"
    hex_low = f"[{low}{low.lower()}]" if low.isalpha() else low
    return rf"(?:\\*{re.escape(char)}|(?:%5[Cc])*%{high}{hex_low})"


SLASH = written("/")
_QUOTE = rf"(?:{written(chr(34))}|{written(chr(39))})"  # " or '
_SPACES = r"(?:\s|\+|%20)*"  # a form body writes a space as + or %20
# One character of a credential inside a URL path or a field: never a slash, quote, space or &, in any encoding, so
# the match ends where the credential does (the rest of a path, the next field) whatever the surroundings.
_CHAR = r"(?:[\w.~+=-]|%(?!2[0267Ff]|5[Cc])[0-9A-Fa-f]{2})"
# Where a form field's name starts: not inside a longer name (`access_token=`), also after an encoded & or ?.
_FIELD_START = r"(?:(?<=%26)|(?<=%3[Ff])|(?<!\w))"


def secret_path(prefix: str, *, to_end: bool = False) -> re.Pattern[str]:
    """What follows ``prefix`` in a URL: its next path segment (or, ``to_end``, the rest of the path) is a
    credential. ``prefix`` is a regex written with a plain `/` for each slash; each matches the slash in any
    encoding (`/`, `\\/`, `%2F`). The prefix is kept in the log (group 1): it shows what was redacted."""
    secret = rf"(?:{_CHAR}|{SLASH})+" if to_end else rf"{_CHAR}+"
    return re.compile(rf"({prefix.replace('/', SLASH)}){secret}")


def secret_field(name: str) -> re.Pattern[str]:
    """The value of the field ``name`` is a credential: in JSON or a repr'd dict (`"name": "value"`), escaped
    JSON, a form body (`name=value`) or URL-encoded JSON. The field name is kept (group 1). A value may be a URL:
    its `:` and slashes, in any encoding, belong to the value."""
    key = re.escape(name)
    before = rf"{_QUOTE}{key}{_QUOTE}{_SPACES}(?::|%3[Aa]){_SPACES}{_QUOTE}|{_FIELD_START}{key}(?:=|%3[Dd])"
    return re.compile(rf"({before})(?:{_CHAR}|{SLASH}|:)+")


# A field named "token" in logged JSON, a repr'd dict or a form body: Slack's verification token, Discord's
# interaction token.
TOKEN_FIELD = secret_field("token")


def written_forms(secret: str) -> set[str]:
    """``secret`` as a log may show it: raw; JSON-escaped (non-ASCII as \\u escapes or not, `/` as `\\/` or not);
    each of those inside a repr (backslashes doubled); and each of all those URL-encoded (quote, quote_plus)."""
    forms = {secret}
    for ensure_ascii in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ensure_ascii)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    forms |= {repr(form)[1:-1] for form in forms}
    forms |= {encode(form, safe=safe) for form in forms for encode in (quote, quote_plus) for safe in ("", "/")}
    return forms - {""}


class SecretRedactingFilter(logging.Filter):
    """Replaces known secrets (in every written form) and text matching ``patterns`` in a record's message and
    traceback; never drops a record. A pattern with a group keeps group 1 (a URL prefix, a field name) and redacts
    the rest of its match."""

    def __init__(self, secrets: Iterable[str | None] = (), patterns: Iterable[re.Pattern[str]] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self._plain: set[str] = set()
        self._patterns = (TOKEN_FIELD, *patterns)
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Also scrub these values (None and "" are skipped); longest form first, so none is half-replaced."""
        # A secret of a character or two would redact every occurrence of those letters in every log line; no real
        # credential is that short (a stub like "e" fails at the platform, and that failure must stay readable).
        self._plain |= {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        forms = {form for secret in self._plain for form in written_forms(secret)}
        self._secrets = sorted(forms, key=len, reverse=True)  # one assignment: a logging thread sees old or new

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in self._patterns:
            text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the caller's bug; leave the record for logging to report
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


_redactors: dict[str, SecretRedactingFilter] = {}  # by the SDK whose secrets each one holds
_lock = threading.Lock()
_make_record: Callable[..., logging.LogRecord] | None = None  # the record factory ours wraps, once installed


def install_redaction(prefix: str, redactor: SecretRedactingFilter) -> None:
    """Scrub every record made from now on, by any logger, with ``redactor`` (and the others installed).

    ``prefix`` names the SDK whose secrets ``redactor`` holds (its logger name); installing again for it replaces
    its redactor, so secrets do not pile up across restarts. Records are scrubbed as the record factory makes them
    rather than by filters on the SDK's loggers, because a logger's filters see only the records made on that
    very logger: not its children's, and not the core's, which logs the SDK's exceptions with their tracebacks."""
    global _make_record
    with _lock:
        if _make_record is None:
            _make_record = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_redacted_record)
        _redactors[prefix] = redactor


def _redacted_record(*args: object, **kwargs: object) -> logging.LogRecord:
    assert _make_record is not None  # installed together with this factory
    record = _make_record(*args, **kwargs)
    try:
        for redactor in list(_redactors.values()):
            redactor.filter(record)
    except Exception:  # a record we cannot scrub is not shown, and logging must never break its caller
        record.msg, record.args, record.exc_info, record.exc_text = (
            "(log record withheld: redacting it failed)",
            (),
            None,
            None,
        )
    return record
