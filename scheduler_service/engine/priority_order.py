"""The priority order of a worker's request lists (GenerateRequest.priority: higher first)."""

from __future__ import annotations

from collections import deque

from yaie.scheduler_service.engine.sequence import Sequence


def insert_by_priority(
    seqs: list[Sequence] | deque[Sequence], seq: Sequence, first: bool = False
) -> None:
    """Puts seq into seqs (ordered by priority, highest first) after the requests of its
    priority, or before them when first. O(1) when seq's priority is the last (first) one's,
    as it is when every request has the default priority."""
    p = seq.priority
    if not first and (not seqs or seqs[-1].priority >= p):
        seqs.append(seq)
        return
    if first and isinstance(seqs, deque) and (not seqs or seqs[0].priority <= p):
        seqs.appendleft(seq)
        return
    index = next(
        (i for i, s in enumerate(seqs) if (s.priority <= p if first else s.priority < p)),
        len(seqs),
    )
    seqs.insert(index, seq)
