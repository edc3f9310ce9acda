"""What the engine reports of itself: the served model (WorkerModelInfo) and the queue, batch and
KV pool counts per worker and per priority (EngineStats), computed from the step loops."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from yaie.scheduler_service.engine.sequence import Sequence
    from yaie.scheduler_service.engine.worker_loop import WorkerLoop


@dataclass(frozen=True)
class WorkerModelInfo:
    """What the workers serve (from Describe; every worker must agree)."""

    model: str
    architecture: str
    dtype: str
    vocab_size: int
    max_context: int
    block_size: int
    random_weights: bool
    num_workers: int
    kv_cache_dtype: str


@dataclass(frozen=True)
class WorkerStats:
    address: str
    healthy: bool
    total_blocks: int
    free_blocks: int
    used_blocks: int  # held by live requests (private blocks and locked cached ones)
    cached_blocks: int  # in the radix tree and evictable
    cache_hit_rate: float  # cached prompt tokens / prompt tokens, over admissions


@dataclass(frozen=True)
class PriorityStats:
    """The waiting and running requests of one priority (counted as EngineStats counts them)."""

    priority: int
    waiting: int
    running: int


@dataclass(frozen=True)
class EngineStats:
    waiting: int  # queued, over all workers
    running: int  # admitted and not yet done with their blocks (finishing ones included)
    num_preemptions: int  # since start
    completed_requests: int  # requests whose last event is out (aborted ones included)
    workers: list[WorkerStats]
    # Per priority with a waiting or running request, highest first.
    priorities: list[PriorityStats] = field(default_factory=list)


def engine_stats(
    loops: list[WorkerLoop], parked: Collection[Sequence], completed: int
) -> EngineStats:
    """The stats of the step loops, with the requests parked for want of a worker."""
    workers = []
    for loop in loops:
        s = loop.kv.stats()
        workers.append(
            WorkerStats(
                address=loop.info.address,
                healthy=loop.healthy,
                total_blocks=s.total_blocks,
                free_blocks=s.free_blocks,
                used_blocks=s.used_blocks,
                cached_blocks=s.cached_blocks,
                cache_hit_rate=loop.policy.counters.hit_rate,
            )
        )
    return EngineStats(
        waiting=num_waiting(loops, parked),
        running=sum(len(lp.running) + len(lp.retiring) for lp in loops),
        num_preemptions=sum(lp.num_preemptions for lp in loops),
        completed_requests=completed,
        workers=workers,
        priorities=_priority_stats(loops, parked),
    )


def num_waiting(loops: list[WorkerLoop], parked: Collection[Sequence]) -> int:
    """Requests queued on a worker or parked for want of one."""
    return len(parked) + sum(len(lp.waiting) for lp in loops)


def _priority_stats(loops: list[WorkerLoop], parked: Collection[Sequence]) -> list[PriorityStats]:
    waiting = Counter(s.priority for s in parked)
    running: Counter[int] = Counter()
    for lp in loops:
        waiting.update(s.priority for s in lp.waiting)
        running.update(s.priority for s in lp.running)
        running.update(s.priority for s in lp.retiring)
    return [
        PriorityStats(p, waiting[p], running[p])
        for p in sorted(waiting.keys() | running.keys(), reverse=True)
    ]
