"""The n completions of one request (GenerationRequest.n): n Sequences sharing one outbox.

Completion i is the single request req.completion(i) (its own seed, stops, usage and blocks);
completions 1.. name completion 0 their leader: they wait in the queue until it has put the
prompt's full blocks in the radix tree, then lock them there, so the prompt is computed once
and each of the others computes only its last, partial block (BatchPolicy._admit).
"""

from __future__ import annotations

from collections.abc import Iterator

from yaie.scheduler_service.engine.request import GenerationRequest
from yaie.scheduler_service.engine.sequence import Outbox, Sequence


class Completions:
    """A live request's sequences (one when n = 1), in completion order."""

    def __init__(self, req: GenerationRequest, arrivals: Iterator[int]) -> None:
        self.request_id = req.request_id
        self.tenant = req.tenant
        self.key = req.key  # its key in the engine's live requests: (tenant, request_id)
        self.outbox = Outbox()
        self.seqs: list[Sequence] = []
        for index in range(req.n):
            single = req if req.n == 1 else req.completion(index)
            seq = Sequence(single, next(arrivals), events=self.outbox, index=index)
            seq.leader = self.seqs[0] if index else None
            self.seqs.append(seq)

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)

    def holds(self, seq: Sequence) -> bool:
        """Whether seq is one of these (the same object: a request_id may be reused)."""
        return any(s is seq for s in self.seqs)

    def chosen(self, index: int | None) -> list[Sequence]:
        """Completion index (all of them for None; none for an index out of range)."""
        if index is None:
            return list(self.seqs)
        return [self.seqs[index]] if 0 <= index < len(self.seqs) else []
