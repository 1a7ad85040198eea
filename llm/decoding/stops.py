"""Token ids in, text deltas out: never half of a character, and nothing of a stop string."""

from __future__ import annotations

import logging

from llm.tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger(__name__)


class StopTextDecoder:
    """Token ids in, text deltas out: never half of a character, and nothing of a stop string.

    Text that could be the start of a stop string is held back until it is clear that it is not; once a stop
    string appears, the text before it is released and the decoder reports that generation should end.
    """

    def __init__(self, tokenizer: Tokenizer, stops: tuple[str, ...] = ()) -> None:
        self._decoder = StreamDecoder(tokenizer)
        self._stops = stops
        self._held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The text that token ``token_id`` releases; check `stopped` afterwards."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.push(token_id), final=False)

    def finish(self) -> str:
        """Whatever is still held back at the end of the stream."""
        if self.stopped:
            return ""
        return self._release(self._held + self._decoder.flush(), final=True)

    def _release(self, text: str, final: bool) -> str:
        # Held-back text is the only place a stop string can begin, so searching held + new text finds them all.
        cut = _find_stop(text, self._stops)
        if cut is not None:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0 if final else _stop_prefix_len(text, self._stops)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Index in ``text`` where the earliest stop string begins, if any."""
    found = [i for s in stops if (i := text.find(s)) != -1]
    return min(found) if found else None


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
