"""SdkWebApi: the one place slack_sdk's errors are read. Whatever Slack answers, the rest of the adapter sees a
result, `RateLimited` with Slack's wait, `SlackRefusedError` with Slack's error code, or, when Slack calls our token
dead, the request's end (`CancelledError`: the adapter is stopping), never an SDK exception."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.adapters.slack.adapter import DEFAULT_RETRY_AFTER_S, SdkWebApi
from bot.adapters.slack.reply import SlackRefusedError
from bot.adapters.streaming import RateLimited


def response(data: dict[str, Any], status: int = 200, headers: dict[str, Any] | None = None) -> AsyncSlackResponse:
    return AsyncSlackResponse(
        client=None, http_verb="POST", api_url="https://slack.test/api/chat.postMessage", req_args={}, data=data,
        headers=headers or {}, status_code=status,
    )  # fmt: skip


class Client:
    """slack_sdk's client as SdkWebApi uses it: typed methods named after the API method."""

    def __init__(self, outcome: AsyncSlackResponse | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def chat_postMessage(self, **params: Any) -> AsyncSlackResponse:
        self.calls.append(("chat_postMessage", params))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


async def test_a_call_goes_to_the_typed_method_and_returns_the_json_body() -> None:
    client = Client(response({"ok": True, "ts": "1.2"}))
    assert await SdkWebApi(client).call("chat.postMessage", channel="C1", text="hi") == {"ok": True, "ts": "1.2"}  # type: ignore[arg-type]
    assert client.calls == [("chat_postMessage", {"channel": "C1", "text": "hi"})]


@pytest.mark.parametrize(
    ("headers", "wait"), [({"Retry-After": "3"}, 3.0), ({"retry-after": ["7"]}, 7.0), ({}, DEFAULT_RETRY_AFTER_S)]
)
async def test_a_429_becomes_rate_limited_with_slacks_wait(headers: dict[str, Any], wait: float) -> None:
    limited = SlackApiError("ratelimited", response({"ok": False, "error": "ratelimited"}, 429, headers))
    with pytest.raises(RateLimited) as raised:
        await SdkWebApi(Client(limited)).call("chat.postMessage", channel="C1", text="hi")  # type: ignore[arg-type]
    assert raised.value.retry_after == wait


async def test_another_error_becomes_slack_refused_with_slacks_code() -> None:
    refused = SlackApiError("not_in_channel", response({"ok": False, "error": "not_in_channel"}))
    with pytest.raises(SlackRefusedError) as raised:
        await SdkWebApi(Client(refused)).call("chat.postMessage", channel="C1", text="hi")  # type: ignore[arg-type]
    assert (raised.value.method, raised.value.error) == ("chat.postMessage", "not_in_channel")


async def test_an_unreadable_answer_is_a_refusal_too_not_an_attribute_error() -> None:
    class RawResponse:  # what slack_sdk attaches when the body is not JSON: aiohttp's response
        status = 502

    garbled = SlackApiError("Received a response in a non-JSON format: <html>Bad Gateway", RawResponse())
    with pytest.raises(SlackRefusedError, match="HTTP 502, unreadable answer"):
        await SdkWebApi(Client(garbled)).call("chat.postMessage", channel="C1", text="hi")  # type: ignore[arg-type]


@pytest.mark.parametrize("error", ["invalid_auth", "token_revoked", "account_inactive", "not_authed"])
async def test_a_dead_token_ends_the_request_instead_of_failing_it(error: str) -> None:
    dead = SlackApiError(error, response({"ok": False, "error": error}))
    with pytest.raises(asyncio.CancelledError):  # the core logs no traceback for it and tells nobody "sorry"
        await SdkWebApi(Client(dead)).call("chat.postMessage", channel="C1", text="hi")  # type: ignore[arg-type]


async def test_once_the_adapter_stopped_on_a_dead_token_nothing_more_is_sent() -> None:
    client = Client(response({"ok": True, "ts": "1.2"}))
    with pytest.raises(asyncio.CancelledError):
        await SdkWebApi(client, refused=lambda: True).call("chat.update", channel="C1", ts="1.2", text="hi")  # type: ignore[arg-type]
    assert client.calls == []
