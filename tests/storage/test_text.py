"""Text comes back exactly as it went in, whatever the script and however long; what cannot be stored is refused
with a reason, never altered."""

from __future__ import annotations

import pytest

from storage.records import ConversationKey
from storage.store import Store

KEY = ConversationKey("discord", "g", "c")

TEXTS = {
    "emoji and ZWJ sequences": "family 👨‍👩‍👧‍👦, flags 🇯🇵🇧🇷, skin tones 👍🏽, 🫠",
    "right-to-left with marks": "\u200fשלום עולם\u200e and مرحبا بالعالم (العربية)",
    "combining characters": "e\u0301 vs é, Z̤͔ͧ̑̓ä͖̭̈̇lg͖̭͒o",
    "CJK and astral plane": "日本語のテキスト, 𠜎𠜱𠝹, 𝕳𝖊𝖑𝖑𝖔",
    "whitespace and markup": "  leading\n\ttabs\r\nCRLF and trailing  \n```py\nprint('x')\n```\n### Response:",
    "SQL and quotes": '\'; DROP TABLE messages; -- "quoted" \\backslash\\ %s %(x)s ?',
    "empty": "",
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
async def test_text_round_trips_exactly(store: Store, text: str) -> None:
    stored = (await store.add_message(KEY, role="user", author_id="u", text=text)).message
    assert stored.text == text
    assert [m.text for m in await store.recent_history(KEY)] == [text]


async def test_a_100_kb_message_is_stored_whole(store: Store) -> None:
    text = ("🙂 مرحبا abc " * 10_000)[:100_000] + "END"
    await store.add_message(KEY, role="assistant", author_id="bot", text=text)
    (stored,) = await store.recent_history(KEY)
    assert len(stored.text) == 100_003 and stored.text == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [("before\x00after", "NUL character"), ("lone \ud800 surrogate", "lone surrogate")],
    ids=["NUL", "lone surrogate"],
)
async def test_text_the_database_cannot_hold_is_refused_with_the_reason(store: Store, text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        await store.add_message(KEY, role="user", author_id="u", text=text)
    assert await store.recent_history(KEY) == []
