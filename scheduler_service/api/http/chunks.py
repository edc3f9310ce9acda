"""yaie.v1 GenerateResponse frames -> OpenAI JSON: streamed chunks and whole responses of chat
and text completions, usage, logprobs, and the Server-Sent Events line that carries a chunk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from yaie.scheduler_service.engine.errors import UnavailableError
from yaie.v1 import generation_pb2 as pb

FINISH_REASONS = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}
DONE = b"data: [DONE]\n\n"
TokenText = Callable[[int], str]


def sse(payload: dict[str, Any]) -> bytes:
    """One Server-Sent Events message holding payload as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def finish_reason(frame: pb.GenerateResponse) -> str | None:
    """None on every frame but the last; a request the server gave up on raises (503)."""
    if frame.finish_reason == pb.FINISH_REASON_ABORT:
        raise UnavailableError(frame.error or "the server aborted the request")
    return FINISH_REASONS.get(frame.finish_reason)


def _entry(token_text: TokenText, token_id: int, logprob: float) -> dict[str, Any]:
    text = token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(frame: pb.GenerateResponse, token_text: TokenText) -> dict[str, Any]:
    content = []
    for item in frame.logprobs:
        entry = _entry(token_text, item.token_id, item.logprob)
        entry["top_logprobs"] = [_entry(token_text, t.token_id, t.logprob) for t in item.top]
        content.append(entry)
    return {"content": content}


def completion_logprobs(
    frame: pb.GenerateResponse, token_text: TokenText, offset: int
) -> dict[str, Any]:
    """The legacy form; text_offset counts characters of the token strings from offset."""
    tokens, offsets = [], []
    for item in frame.logprobs:
        offsets.append(offset)
        tokens.append(token_text(item.token_id))
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [item.logprob for item in frame.logprobs],
        "top_logprobs": [
            {token_text(t.token_id): t.logprob for t in item.top} for item in frame.logprobs
        ],
        "text_offset": offsets,
    }


class Chunker:
    """Shapes one call's frames as OpenAI objects (chat: `chat.completion[.chunk]`, else
    `text_completion`); logprobs: whether they were asked for."""

    def __init__(
        self, chat: bool, response_id: str, model: str, token_text: TokenText, logprobs: bool
    ) -> None:
        self.chat = chat
        self._head = {"id": response_id, "object": "", "created": int(time.time()), "model": model}
        self._token_text = token_text
        self._logprobs = logprobs
        self._offsets: dict[int, int] = {}  # choice index -> text_offset of its next token
        # The chunks' constant head, encoded once: "data: {id, object, created, model"
        self._stream_head = sse(self._object(True))[:-3]

    def _object(self, streamed: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if streamed and self.chat else ""
        )
        return {**self._head, "object": kind}

    def _choice_logprobs(self, frame: pb.GenerateResponse, index: int) -> dict[str, Any] | None:
        if not self._logprobs:
            return None
        if self.chat:
            return chat_logprobs(frame, self._token_text)
        offset = self._offsets.get(index, 0)
        self._offsets[index] = offset + len(frame.text)
        return completion_logprobs(frame, self._token_text, offset)

    def role_chunk(self, index: int = 0) -> dict[str, Any]:
        """A chat stream's first chunk of choice index: the assistant's role, no text yet."""
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        return {**self._object(True), "choices": [{**choice, "finish_reason": None}]}

    def chunk(self, frame: pb.GenerateResponse) -> dict[str, Any]:
        """The chunk of frame, as choice frame.index (a streamed request has one prompt)."""
        index = frame.index
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            # The last chunk may carry no text: its delta is then empty, as OpenAI's is.
            text = frame.text or not frame.finish_reason
            choice["delta"] = {"content": frame.text} if text else {}
        else:
            choice["text"] = frame.text
        choice["logprobs"] = self._choice_logprobs(frame, index)
        choice["finish_reason"] = finish_reason(frame)
        return {**self._object(True), "choices": [choice]}

    def encoded_chunk(self, frame: pb.GenerateResponse, include_usage: bool = False) -> bytes:
        """sse(chunk(frame)) (with "usage": null when include_usage), the same bytes built from
        the encoded head and the text alone: this runs once per frame on the scheduler's loop."""
        if self._logprobs:
            chunk = self.chunk(frame)
            if include_usage:
                chunk["usage"] = None
            return sse(chunk)
        reason = finish_reason(frame)
        text = json.dumps(frame.text).encode()
        if not self.chat:
            body = b'"text":' + text
        elif frame.text or reason is None:
            body = b'"delta":{"content":' + text + b"}"
        else:
            body = b'"delta":{}'
        end = b"null" if reason is None else b'"' + reason.encode() + b'"'
        usage = b',"usage":null' if include_usage else b""
        return (
            self._stream_head
            + b',"choices":[{"index":'
            + str(frame.index).encode()
            + b","
            + body
            + b',"logprobs":null,"finish_reason":'
            + end
            + b"}]"
            + usage
            + b"}\n\n"
        )

    def usage_chunk(self, frames: list[pb.GenerateResponse]) -> dict[str, Any]:
        """stream_options.include_usage: the last chunk, no choices, the totals."""
        return {**self._object(True), "choices": [], "usage": total_usage(frames)}

    def response(self, frames: list[pb.GenerateResponse]) -> dict[str, Any]:
        """The whole response; frames: one merged frame per choice, in choice order."""
        choices = []
        for index, frame in enumerate(frames):
            choice: dict[str, Any] = {"index": index}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": frame.text}
            else:
                choice["text"] = frame.text
            choice["logprobs"] = self._choice_logprobs(frame, index)
            choice["finish_reason"] = finish_reason(frame)
            choices.append(choice)
        return {**self._object(False), "choices": choices, "usage": total_usage(frames)}


def total_usage(frames: list[pb.GenerateResponse]) -> dict[str, Any]:
    """Usage summed over choices (each frame holds its completion's running totals); a prompt's
    tokens count once however many completions it has (its completion 0's, as OpenAI counts)."""
    firsts = [frame for frame in frames if frame.index == 0]  # one per prompt
    prompt = sum(frame.usage.prompt_tokens for frame in firsts)
    completion = sum(frame.usage.completion_tokens for frame in frames)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(f.usage.cached_tokens for f in firsts)},
    }
