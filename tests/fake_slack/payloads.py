"""Payloads as Slack sends them (events, slash commands, message shortcuts), trimmed to the fields that matter."""

from __future__ import annotations

import itertools
from typing import Any

from tests.fake_slack.server import BOT_USER, TEAM

TS = "1700000100.000100"  # the timestamp of the message most tests mention the bot in
_event_ids = itertools.count(1)
_trigger_ids = itertools.count(1)


def trigger_id() -> str:
    """A new trigger id, shaped like Slack's: each slash command or shortcut a user fires gets its own."""
    return f"1700000000.{next(_trigger_ids):09d}.8088930838d88f008e0"


def event_callback(event: dict[str, Any], *, event_id: str | None = None, team: str = TEAM) -> dict[str, Any]:
    return {
        "token": "legacy-verification-token",
        "team_id": team,
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):08d}",
        "event_time": 1700000000,
        "authorizations": [{"team_id": team, "user_id": BOT_USER, "is_bot": True, "enterprise_id": None}],
    }


def mention(text: str, ts: str, *, user: str = "U1", channel: str = "C1", thread_ts: str | None = None) -> dict:
    event = {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text}",
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def direct_message(text: str, ts: str, *, user: str = "U1", channel: str = "D1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "im",
        **extra,
    }


def message_deleted(channel: str, deleted_ts: str, *, user: str = "U1", channel_type: str = "channel") -> dict:
    return {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "channel": channel,
        "channel_type": channel_type,
        "deleted_ts": deleted_ts,
        "ts": "1700009999.000001",
        "previous_message": {"type": "message", "user": user, "text": "gone", "ts": deleted_ts},
    }


def channel_deleted(channel: str) -> dict[str, Any]:
    """A public channel was deleted (channel_deleted): the event carries only the channel's id."""
    return {"type": "channel_deleted", "channel": channel}


def group_deleted(channel: str, *, actor: str = "U1") -> dict[str, Any]:
    """A private channel the bot was in was deleted (group_deleted)."""
    return {
        "type": "group_deleted",
        "channel": channel,
        "date_deleted": 1700000500,
        "actor_id": actor,
        "event_ts": "1700000500.000100",
    }


def slash_command(
    command: str,
    text: str,
    response_url: str,
    *,
    user: str = "U1",
    channel: str = "C1",
    team: str = TEAM,
    trigger: str | None = None,
) -> dict[str, str]:
    return {
        "token": "legacy-verification-token",
        "team_id": team,
        "team_domain": "test",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": "alice",
        "command": command,
        "text": text,
        "api_app_id": "A1",
        "response_url": response_url,
        "trigger_id": trigger or trigger_id(),
    }


def message_shortcut(
    callback_id: str,
    message: dict[str, Any],
    response_url: str,
    *,
    user: str = "U1",
    channel: str = "C1",
    team: str = TEAM,
    trigger: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "message_action",
        "token": "legacy-verification-token",
        "action_ts": "1700000001.000001",
        "team": {"id": team, "domain": "test"},
        "user": {"id": user, "name": "alice"},
        "channel": {"id": channel, "name": "general"},
        "callback_id": callback_id,
        "trigger_id": trigger or trigger_id(),
        "message_ts": message["ts"],
        "message": {"type": "message", **message},
        "response_url": response_url,
    }
