"""Discord API objects as Discord's JSON spells them (API v10), only the fields discord.py reads.

Ids are strings of snowflake size, as on the wire. Field names follow discord.py's `types/` TypedDicts.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

APP_ID = "1100000000000000001"  # the application and its bot user share an id, as on Discord
GUILD_ID = "1200000000000000001"
CHANNEL_ID = "1300000000000000001"
THREAD_ID = "1300000000000000002"
UNCACHED_THREAD_ID = "1300000000000000003"  # a thread the gateway never announced: looked up by REST
OTHER_CHANNEL_ID = "1300000000000000004"  # a second text channel of the guild
DM_CHANNEL_ID = "1300000000000000009"
USER_ID = "1400000000000000001"
OWNER_ID = "1400000000000000002"
ADMIN_ID = "1400000000000000003"  # an id the bot's settings name as admin
OTHER_BOT_ID = "1400000000000000009"
ROLE_ID = "1500000000000000001"
ALL_PERMISSIONS = str((1 << 53) - 1)

_ids = itertools.count(1_600_000_000_000_000_000)


def snowflake() -> str:
    return str(next(_ids))


def now() -> str:
    return datetime.now(UTC).isoformat()


def user(user_id: str, name: str, *, bot: bool = False) -> Json:
    return {
        "id": user_id,
        "username": name,
        "discriminator": "0",
        "global_name": name.title(),
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


BOT = user(APP_ID, "scratchbot", bot=True)
ALICE = user(USER_ID, "alice")
OWNER = user(OWNER_ID, "owner")
ADMIN = user(ADMIN_ID, "admin")
OTHER_BOT = user(OTHER_BOT_ID, "otherbot", bot=True)


def member(of: Json, *, permissions: str | None = None) -> Json:
    data: Json = {"user": of, "roles": [], "joined_at": now(), "deaf": False, "mute": False, "flags": 0}
    if permissions is not None:  # interactions carry the member's computed permissions
        data["permissions"] = permissions
    return data


def text_channel(channel_id: str = CHANNEL_ID, guild_id: str = GUILD_ID) -> Json:
    return {
        "id": channel_id,
        "type": 0,
        "guild_id": guild_id,
        "name": "general" if channel_id == CHANNEL_ID else f"channel-{channel_id[-4:]}",
        "position": 0 if channel_id == CHANNEL_ID else 1,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def thread(thread_id: str = THREAD_ID, parent_id: str = CHANNEL_ID, guild_id: str = GUILD_ID) -> Json:
    return {
        "id": thread_id,
        "type": 11,
        "guild_id": guild_id,
        "parent_id": parent_id,
        "owner_id": USER_ID,
        "name": "a thread",
        "message_count": 1,
        "member_count": 1,
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": now(),
            "locked": False,
        },
    }


def dm_channel(with_user: Json, channel_id: str = DM_CHANNEL_ID) -> Json:
    return {"id": channel_id, "type": 1, "recipients": [with_user], "last_message_id": None}


def guild(guild_id: str = GUILD_ID) -> Json:
    """GUILD_CREATE: the guild with its channels and active threads; the bot is its only cached member."""
    everyone = {
        "id": guild_id,
        "name": "@everyone",
        "permissions": ALL_PERMISSIONS,
        "position": 0,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }
    role = {**everyone, "id": ROLE_ID, "name": "staff", "position": 1, "mentionable": True}
    return {
        "id": guild_id,
        "name": "Test guild",
        "unavailable": False,
        "member_count": 4,
        "large": False,
        "owner_id": USER_ID,
        "joined_at": now(),
        "roles": [everyone, role],
        "emojis": [],
        "stickers": [],
        "features": [],
        "channels": [text_channel(guild_id=guild_id), text_channel(OTHER_CHANNEL_ID, guild_id)],
        "threads": [thread(guild_id=guild_id)],
        "members": [member(BOT)],
        "presences": [],
        "voice_states": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "preferred_locale": "en-US",
    }


def message(
    channel_id: str,
    author: Json,
    content: str,
    *,
    guild_id: str | None = GUILD_ID,
    mentions: list[Json] | tuple[Json, ...] = (),
    message_id: str | None = None,
    reference: Json | None = None,
    webhook_id: str | None = None,
) -> Json:
    data: Json = {
        "id": message_id or snowflake(),
        "channel_id": channel_id,
        "author": author,
        "content": content,
        "timestamp": now(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": list(mentions),
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 19 if reference else 0,
        "flags": 0,
        "components": [],
    }
    if guild_id is not None:
        data["guild_id"] = guild_id
        data["member"] = {k: v for k, v in member(author).items() if k != "user"}
    if reference is not None:
        data["message_reference"] = reference
    if webhook_id is not None:
        data["webhook_id"] = webhook_id
    return data


def bulk_delete(channel_id: str, message_ids: list[str], guild_id: str = GUILD_ID) -> Json:
    """MESSAGE_DELETE_BULK: a moderator (or a bot) deleted many messages of one channel or thread at once."""
    return {"ids": list(message_ids), "channel_id": channel_id, "guild_id": guild_id}


def thread_delete(thread_id: str, parent_id: str = CHANNEL_ID, guild_id: str = GUILD_ID) -> Json:
    """THREAD_DELETE: Discord sends only the ids and the type, not the whole thread."""
    return {"id": thread_id, "guild_id": guild_id, "parent_id": parent_id, "type": 11}


def ready(session_id: str, resume_url: str) -> Json:
    return {
        "v": 10,
        "user": {**BOT, "verified": True, "mfa_enabled": False, "flags": 0},
        "session_id": session_id,
        "resume_gateway_url": resume_url,
        "guilds": [{"id": GUILD_ID, "unavailable": True}],
        "application": {"id": APP_ID, "flags": 0},
        "private_channels": [],
        "relationships": [],
    }


def application(*, team_member: Json | None = None) -> Json:
    """GET /oauth2/applications/@me: owned by OWNER, or by a team (an admin and a read-only member) if given."""
    team = None
    if team_member is not None:
        team = {
            "id": "1700000000000000001",
            "name": "team",
            "icon": None,
            "owner_user_id": OWNER_ID,
            "members": [
                {
                    "membership_state": 2,
                    "team_id": "1700000000000000001",
                    "user": OWNER,
                    "role": "admin",
                    "permissions": ["*"],
                },
                {
                    "membership_state": 2,
                    "team_id": "1700000000000000001",
                    "user": team_member,
                    "role": "read_only",
                    "permissions": ["*"],
                },
            ],
        }
    return {
        "id": APP_ID,
        "name": "scratchbot",
        "icon": None,
        "description": "",
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": OWNER,
        "team": team,
        "verify_key": "00" * 32,
        "flags": 0,
        "summary": "",
        "rpc_origins": [],
        "redirect_uris": [],
        "tags": [],
    }


def interaction(
    data: Json,
    token: str,
    *,
    by: Json = ALICE,
    channel: Json | None = None,
    kind: int = 2,
    locale: str = "en-US",
) -> Json:
    """INTERACTION_CREATE in a guild channel (``channel`` defaults to #general); kind 2 command, 4 autocomplete."""
    where = channel or text_channel()
    payload: Json = {
        "id": snowflake(),
        "application_id": APP_ID,
        "type": kind,
        "data": data,
        "token": token,
        "version": 1,
        "channel_id": where["id"],
        "channel": where,
        "locale": locale,
        "app_permissions": ALL_PERMISSIONS,
        "entitlements": [],
        "attachment_size_limit": 10 * 1024 * 1024,
    }
    if where["type"] == 1:
        payload.update(user=by, context=1, authorizing_integration_owners={"0": by["id"]})
    else:
        payload.update(
            guild_id=GUILD_ID,
            member=member(by, permissions=ALL_PERMISSIONS),
            guild_locale="en-US",
            context=0,
            authorizing_integration_owners={"0": GUILD_ID},
        )
    return payload


def slash(command: str, /, **options: object) -> Json:
    """The `data` of a chat-input command; an option given as ("text", True) is the focused one (autocomplete)."""
    rendered = []
    for key, value in options.items():
        if isinstance(value, tuple):
            rendered.append({"name": key, "type": 3, "value": value[0], "focused": True})
        else:
            rendered.append({"name": key, "type": 4 if isinstance(value, int) else 3, "value": value})
    return {"id": snowflake(), "name": command, "type": 1, "options": rendered}


def context_menu(name: str, target: Json) -> Json:
    return {
        "id": snowflake(),
        "name": name,
        "type": 3,
        "target_id": target["id"],
        "resolved": {"messages": {target["id"]: target}},
    }
