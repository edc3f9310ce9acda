"""The HTTP API's streamed chunks: the fast encoding of a frame is byte for byte the JSON of the
chunk object, for chat and completions, mid-stream and last, with usage null or left out."""

from __future__ import annotations

import json

import pytest

from yaie.scheduler_service.api.http.chunks import Chunker, sse
from yaie.scheduler_service.engine.errors import UnavailableError
from yaie.v1 import generation_pb2 as pb

FRAMES = [
    pb.GenerateResponse(text=' he said "hi"\n', token_ids=[1, 2]),
    pb.GenerateResponse(text="é✓", token_ids=[3]),
    pb.GenerateResponse(text="", token_ids=[4]),
    pb.GenerateResponse(text="end", token_ids=[5], finish_reason=pb.FINISH_REASON_STOP),
    pb.GenerateResponse(text="", finish_reason=pb.FINISH_REASON_LENGTH),
    pb.GenerateResponse(text="x", token_ids=[6], index=3),  # choice 3 of a request with n > 3
]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("frame", FRAMES)
def test_encoded_chunk_is_the_chunk_object(chat, include_usage, frame):
    chunker = Chunker(chat, "id-1", "m/odel", lambda token_id: "t", logprobs=False)
    chunk = chunker.chunk(frame)
    if include_usage:
        chunk["usage"] = None
    assert chunker.encoded_chunk(frame, include_usage) == sse(chunk)
    assert json.loads(sse(chunk)[len(b"data: ") :]) == chunk


def test_chat_deltas_and_finish_reasons():
    chunker = Chunker(True, "id-1", "m", lambda token_id: "t", logprobs=False)
    assert chunker.role_chunk()["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunker.chunk(FRAMES[0])["choices"][0]["delta"] == {"content": ' he said "hi"\n'}
    assert chunker.chunk(FRAMES[4])["choices"][0] | {"logprobs": None} == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    aborted = pb.GenerateResponse(finish_reason=pb.FINISH_REASON_ABORT, error="worker lost")
    with pytest.raises(UnavailableError, match="worker lost"):
        chunker.encoded_chunk(aborted)


def test_whole_response_sums_usage_over_choices():
    chunker = Chunker(False, "id-1", "m", lambda token_id: "t", logprobs=False)
    frames = [pb.GenerateResponse(text="a", finish_reason=pb.FINISH_REASON_STOP) for _ in "xy"]
    for frame in frames:
        frame.usage.prompt_tokens, frame.usage.completion_tokens = 3, 2
        frame.usage.cached_tokens = 1
    body = chunker.response(frames)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2},
    }


def test_choices_of_one_prompt_count_its_prompt_once():
    """n = 3 completions of each of 2 prompts: 6 choices; prompt tokens (and cached ones) are
    each prompt's once, completion tokens every choice's; a chunk names its choice."""
    chunker = Chunker(True, "id-1", "m", lambda token_id: "t", logprobs=False)
    frames = []
    for prompt_tokens in (5, 7):
        for index in range(3):
            frame = pb.GenerateResponse(text="a", finish_reason=pb.FINISH_REASON_LENGTH)
            frame.index = index
            frame.usage.prompt_tokens, frame.usage.completion_tokens = prompt_tokens, 4
            frame.usage.cached_tokens = 4 if index else 0
            frames.append(frame)
    body = chunker.response(frames)
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert body["usage"]["prompt_tokens"] == 12 and body["usage"]["completion_tokens"] == 24
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert chunker.chunk(frames[2])["choices"][0]["index"] == 2
    assert chunker.role_chunk(2)["choices"][0]["index"] == 2
