"""One request's engine events -> GenerateResponse frames: text deltas, stop strings, usage.

Tokens are detokenized one at a time so that a stop string is caught at the token that
completes it; tokens after it are dropped.
"""

from __future__ import annotations

from yaie.scheduler_service.api.detokenizer import Decoder, IncrementalDetokenizer
from yaie.scheduler_service.api.stop_strings import StopStringMatcher
from yaie.scheduler_service.api.validation import ValidatedRequest
from yaie.scheduler_service.engine.request import FinishReason, OutputEvent, TokenLogprobs
from yaie.v1 import generation_pb2 as pb

FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}


def _logprob_to_proto(item: TokenLogprobs) -> pb.TokenLogprob:
    top = [pb.TopLogprob(token_id=t, logprob=lp) for t, lp in item.top]
    return pb.TokenLogprob(token_id=item.token_id, logprob=item.logprob, top=top)


class OutputStream:
    """Builds the frames of one Generate call from the engine's OutputEvents."""

    def __init__(self, request: ValidatedRequest, decoder: Decoder, index: int = 0) -> None:
        self._request_id = request.generation.request_id
        self.index = index  # the completion (GenerationRequest.n) whose frames these are
        self._min_new_tokens = request.generation.min_new_tokens
        self._detokenizer = IncrementalDetokenizer(
            decoder, request.generation.prompt_ids, request.skip_special_tokens
        )
        # None: no stop strings, the text goes out as the detokenizer gives it.
        self._stops: StopStringMatcher | None = None
        if request.stop_strings:
            self._stops = StopStringMatcher(
                list(request.stop_strings), request.include_stop_str_in_output
            )
        self.num_completion_tokens = 0
        # Set once a stop string ended the request: the engine must be told to finish it.
        self.matched_stop: str | None = None
        self.finished = False

    def frame(self, event: OutputEvent) -> pb.GenerateResponse | None:
        """The frame for one event, or None when it carries nothing to send."""
        assert not self.finished, "no events after the final frame"
        if self._stops is None:  # every token goes out, detokenized together
            sent = event.token_ids
            parts = [self._detokenizer.add_tokens(sent)] if sent else []
            self.num_completion_tokens += len(sent)
        else:
            parts, sent = self._until_stop(event.token_ids)
        if self.matched_stop is None and event.finish_reason is None and not sent:
            return None
        # Built in one constructor call (repeated fields from lists), not field by field.
        logprobs = [_logprob_to_proto(item) for item in event.logprobs[: len(sent)]]
        frame = pb.GenerateResponse(
            request_id=self._request_id,
            token_ids=sent,
            logprobs=logprobs,
            index=self.index,
            usage=pb.Usage(
                prompt_tokens=event.num_prompt_tokens,
                cached_tokens=event.num_cached_tokens,
                completion_tokens=self.num_completion_tokens,
            ),
        )
        if self.matched_stop is not None:
            self.finished = True
            frame.finish_reason = pb.FINISH_REASON_STOP
            frame.matched_stop = self.matched_stop
        elif event.finish_reason is not None:
            self.finished = True
            parts.append(self._flush())
            frame.finish_reason = FINISH_REASONS[event.finish_reason]
            if self.matched_stop is not None:  # the flushed text completed a stop string
                frame.finish_reason = pb.FINISH_REASON_STOP
                frame.matched_stop = self.matched_stop
            elif event.matched_stop_token is not None:
                frame.matched_stop_token_id = event.matched_stop_token
            frame.error = event.error or ""
        frame.text = "".join(parts)
        return frame

    def _until_stop(self, token_ids: list[int]) -> tuple[list[str], list[int]]:
        """The text parts and tokens of token_ids up to the one completing a stop string (which
        sets matched_stop), each token detokenized and checked alone."""
        parts: list[str] = []
        sent: list[int] = []
        add_token, stops = self._detokenizer.add_token, self._stops
        assert stops is not None
        for token_id in token_ids:
            self.num_completion_tokens += 1
            sent.append(token_id)
            can_stop = self.num_completion_tokens >= self._min_new_tokens
            check = stops.feed(add_token(token_id), can_stop)
            parts.append(check.text)
            if check.matched is not None:
                self.matched_stop = check.matched
                break
        return parts, sent

    def _flush(self) -> str:
        """Text held back by the detokenizer and the stop matcher, at the end of the stream."""
        if self._stops is None:
            return self._detokenizer.flush()
        can_stop = self.num_completion_tokens >= self._min_new_tokens
        check = self._stops.feed(self._detokenizer.flush(), can_stop)
        if check.matched is not None:
            self.matched_stop = check.matched
            return check.text
        return check.text + self._stops.flush()


def merge_completions(frames: list[pb.GenerateResponse]) -> list[pb.GenerateResponse]:
    """One merged frame per completion (GenerateResponse.index), in index order."""
    by_index: dict[int, list[pb.GenerateResponse]] = {}
    for frame in frames:
        by_index.setdefault(frame.index, []).append(frame)
    return [merge_frames(by_index[index]) for index in sorted(by_index)]


def merge_frames(frames: list[pb.GenerateResponse]) -> pb.GenerateResponse:
    """One frame holding a whole stream of one completion (OutputOptions.single_frame)."""
    merged = pb.GenerateResponse()
    for frame in frames:
        merged.MergeFrom(frame)  # repeated fields append; set scalars and messages overwrite
    # Joined once: adding each frame's text to the merged text copied it again per frame
    # (quadratic in the output: seconds of the event loop for a long generation).
    merged.text = "".join(frame.text for frame in frames)
    return merged
