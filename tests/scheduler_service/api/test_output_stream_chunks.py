"""Frames from multi-token events (the stream interval, a late reader) add up to exactly what
one-token events give: tokens, text, stop string, finish reason and usage."""

from __future__ import annotations

import pytest

from yaie.scheduler_service.api.output_stream import OutputStream
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.api.validation import ValidatedRequest
from yaie.scheduler_service.engine.request import (
    FinishReason,
    GenerationRequest,
    OutputEvent,
    SamplingConfig,
)

TEXT = " the cook says: naïve café, 日本語 🙂 and then STOP here and more words after it"


def _run(tokenizer: Tokenizer, stops: tuple[str, ...], ids: list[int], size: int, min_new: int):
    """Feeds ids in events of `size` tokens (the last one finishing with LENGTH); returns the
    concatenated stream: token ids, text, and the last frame's end state."""
    generation = GenerationRequest("r", [5, 6, 7], SamplingConfig(), len(ids), min_new)
    stream = OutputStream(ValidatedRequest(generation, stops), tokenizer)
    tokens, text, last = [], "", None
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        done = start + size >= len(ids)
        event = OutputEvent(
            "r", chunk, [], 3, 0, start + len(chunk), FinishReason.LENGTH if done else None
        )
        frame = stream.frame(event)
        if frame is not None:
            tokens += frame.token_ids
            text += frame.text
            last = frame
        if stream.finished:
            break
    end = (last.finish_reason, last.matched_stop, last.usage.completion_tokens)
    return tokens, text, end


@pytest.mark.parametrize("stops", [(), ("STOP",), ("café", "🙂 and"), ("never there",)])
@pytest.mark.parametrize("min_new", [0, 12])
def test_any_event_size_gives_the_one_token_stream(
    tokenizer: Tokenizer, stops: tuple[str, ...], min_new: int
) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    reference = _run(tokenizer, stops, ids, 1, min_new)
    for size in (2, 3, 4, 7, len(ids)):
        assert _run(tokenizer, stops, ids, size, min_new) == reference
    if not stops or stops == ("never there",):
        assert reference[1] == TEXT and reference[0] == ids
    if stops == ("STOP",):  # ends at the stop string, which is not sent
        assert reference[2][1] == "STOP" and reference[1] == TEXT[: TEXT.index("STOP")]
