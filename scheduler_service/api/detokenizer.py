"""Incremental detokenization: token ids in, text deltas out, never splitting a UTF-8 character.

Each step decodes a short window of ids twice (up to the last emitted token, and up to the new
one) and emits the difference; the first is usually that one token alone, whose text comes from
a memo of single-token texts (the tokenizer's, shared by its requests). A window whose text
ends in U+FFFD is an incomplete character: it is held back until a later token completes it (or
the stream ends and `flush` gives it up).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded in front of the first output token, so that tokenizers that strip a
# leading space at the start of a decode (SentencePiece) keep it for the first output word.
PROMPT_CONTEXT_TOKENS = 5
# A UTF-8 character is at most 4 bytes, so at most 4 byte-level tokens; past that the U+FFFD is
# the text itself (an invalid byte sequence the model produced), not a character still arriving.
MAX_HELD_TOKENS = 4


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns one request's output tokens, fed one at a time, into text deltas."""

    def __init__(
        self, decoder: Decoder, prompt_ids: list[int], skip_special_tokens: bool = False
    ) -> None:
        # A decoder that offers one binds its fast path once (api/tokenizer.py: window_decoder).
        bind = getattr(decoder, "window_decoder", None)
        self._decode: Callable[[list[int]], str] = (
            bind(skip_special_tokens)
            if bind is not None
            else functools.partial(decoder.decode, skip_special_tokens=skip_special_tokens)
        )
        memo = getattr(decoder, "token_texts", None)
        self._texts: dict[int, str] = memo(skip_special_tokens) if memo is not None else {}
        # ids[:read_offset]: the context already emitted as text (or prompt); the rest is held.
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._read_offset = len(self._ids)

    def add_token(self, token_id: int) -> str:
        """Appends one token; returns the text it completes (possibly empty)."""
        ids = self._ids
        ids.append(token_id)
        prefix_text = self._context_text()
        new_text = self._decode(ids)
        held = len(self._ids) - self._read_offset
        if new_text.endswith(REPLACEMENT_CHAR) and held < MAX_HELD_TOKENS:
            return ""  # an incomplete character: wait for the bytes that complete it
        self._advance()
        # A token with no text of its own (a skipped special token, an id the tokenizer does not
        # know) adds nothing; it is not held, so the window never grows without bound.
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""

    def add_tokens(self, token_ids: list[int]) -> str:
        """The text of several tokens at once: equal to joining add_token's results for each,
        with one decode of the window instead of two per token (a frame under the stream
        interval carries several). A window with a U+FFFD anywhere (a character still arriving
        or invalid bytes) goes token by token, where holding back is decided per token."""
        if len(token_ids) == 1:
            return self.add_token(token_ids[0])
        ids = self._ids
        start = len(ids)
        ids.extend(token_ids)
        new_text = self._decode(ids)
        if REPLACEMENT_CHAR in new_text:
            del ids[start:]
            return "".join([self.add_token(token_id) for token_id in token_ids])
        prefix_text = self._context_text()
        self._advance()
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""

    def _context_text(self) -> str:
        """The text of the ids already emitted (the window's context)."""
        ids = self._ids
        if self._read_offset == 1:  # the usual context: the one token emitted last
            text = self._texts.get(ids[0])
            if text is None:
                text = self._texts[ids[0]] = self._decode(ids[:1])
            return text
        return self._decode(ids[: self._read_offset])

    def _advance(self) -> None:
        """Marks every id as emitted; the last emitted ids become the next window's context."""
        del self._ids[: self._read_offset]
        self._read_offset = len(self._ids)

    def flush(self) -> str:
        """Text held back at the end of the stream (an incomplete character decodes as U+FFFD)."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[: self._read_offset])
        new_text = self._decode(self._ids)
        self._advance()
        return new_text[len(prefix_text) :]
