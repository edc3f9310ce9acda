"""Stop strings on a text stream: a stop string never reaches the client unless asked for.

Text is held back while its tail could still be the start of a stop string; it is released once
a later delta rules that out, or dropped with everything after it when the stop string completes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopCheck:
    """What to send for one delta, and the stop string it completed (None: keep going)."""

    text: str
    matched: str | None = None


class StopStringMatcher:
    """Finds the first stop string in one request's text stream."""

    def __init__(self, stops: list[str], include_stop_str_in_output: bool = False) -> None:
        assert all(stops), "stop strings must not be empty"
        self._stops = list(stops)
        self._include = include_stop_str_in_output
        self._held = ""

    def feed(self, delta: str, can_stop: bool = True) -> StopCheck:
        """Adds a text delta; returns the text safe to send now.

        can_stop=False (before min_new_tokens) never matches, but still holds back a tail that a
        later delta could complete into a stop string.
        """
        if not self._stops:
            return StopCheck(delta)
        text = self._held + delta
        if can_stop:
            match = self._first_match(text)
            if match is not None:
                start, stop = match
                self._held = ""
                end = start + len(stop) if self._include else start
                return StopCheck(text[:end], matched=stop)
        keep = self._partial_tail_length(text)
        self._held = text[len(text) - keep :] if keep else ""
        return StopCheck(text[: len(text) - keep])

    def flush(self) -> str:
        """The held-back text, when the stream ends for another reason."""
        text, self._held = self._held, ""
        return text

    def _first_match(self, text: str) -> tuple[int, str] | None:
        """(start, stop string) of the stop string that ends first in text (as a character-by-
        character stream would see it); of several ending together, the longest."""
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])

    def _partial_tail_length(self, text: str) -> int:
        """Length of the longest tail of text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
