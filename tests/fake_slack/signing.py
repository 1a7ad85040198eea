"""Requests to an HTTP-mode app, signed as Slack signs them: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp


def sign(secret: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


class SignedPoster:
    """Posts to one app URL with one signing secret; each post can be altered the ways tests need."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        self.secret = secret

    async def event(self, body: dict[str, Any], **options: Any) -> tuple[int, str]:
        return await self.post(json.dumps(body), "application/json", **options)

    async def command(self, form: dict[str, str], **options: Any) -> tuple[int, str]:
        return await self.post(urlencode(form), "application/x-www-form-urlencoded", **options)

    async def interactive(self, payload: dict[str, Any], **options: Any) -> tuple[int, str]:
        return await self.post(
            urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded", **options
        )

    async def post(
        self,
        body: str,
        content_type: str,
        *,
        age_s: float = 0,
        retry_num: int | None = None,
        signature: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[int, str]:
        """Post ``body`` signed as Slack signs it; the same ``timestamp`` twice replays a captured request."""
        timestamp = int(time.time() - age_s) if timestamp is None else timestamp
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": sign(self.secret, timestamp, body) if signature is None else signature,
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, data=body.encode(), headers=headers) as response,
        ):
            return response.status, await response.text()
