"""A step plan stays under the worker's receive limit (WorkerInfo.max_plan_bytes): new requests
join a plan while their encoded size fits, and the size bound used for that is never below
the real encoding."""

from __future__ import annotations

from collections import deque

from yaie.kernels.cache import KVCacheManager
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.policy import BatchPolicy
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig
from yaie.scheduler_service.engine.sequence import Sequence
from yaie.scheduler_service.workers.step_plan import (
    PLAN_SLACK_BYTES,
    NewRequestSpec,
    PlanEntry,
    StepPlan,
    new_request_bytes,
)
from yaie.scheduler_service.workers.worker_client import encode_plan

GRAMMAR = "a" * (1 << 20)  # a 1 MiB regex


def _seq(i: int, grammar: str = GRAMMAR) -> Sequence:
    sampling = SamplingConfig(seed=i, grammar_kind="regex", grammar=grammar)
    return Sequence(GenerationRequest(f"r{i}", [5, 6, 7, 8 + i], sampling, 4), i)


def test_new_requests_wait_for_the_next_plan_when_this_one_is_full() -> None:
    limit = PLAN_SLACK_BYTES + (5 << 19)  # room for two 1 MiB grammars, not three
    policy = BatchPolicy(SchedulerConfig(), KVCacheManager(64, 4), lambda seq: None, limit)
    running: list[Sequence] = []
    waiting = deque(_seq(i) for i in range(3))
    first = policy.schedule(running, waiting, blocks_pending=False)
    assert [run.seq.request_id for run in first] == ["r0", "r1"]
    assert [seq.request_id for seq in waiting] == ["r2"]
    for run in first:
        run.seq.num_scheduled += run.num_tokens
    second = policy.schedule(running, waiting, blocks_pending=False)
    assert "r2" in [run.seq.request_id for run in second] and not waiting


def test_one_request_larger_than_the_room_still_goes_alone() -> None:
    """Nothing better can be done with it (its size is bounded by the public message limit,
    far below any worker's floor); it must not block the queue."""
    policy = BatchPolicy(SchedulerConfig(), KVCacheManager(64, 4), lambda seq: None, 1024)
    runs = policy.schedule([], deque([_seq(0)]), blocks_pending=False)
    assert len(runs) == 1


def test_the_size_bound_covers_the_encoding() -> None:
    sampling = SamplingConfig(
        seed=2**63,
        temperature=0.7,
        top_p=0.9,
        logit_bias={0: -100.0, 151_935: 5.5, 7: 1e30},
        grammar_kind="json_schema",
        grammar='{"type": "string", "description": "héllo ✓"}',
        top_logprobs=20,
        return_logprobs=True,
    )
    ids = [0, 1, 2**21, 151_935, 2**31 - 1]
    spec = NewRequestSpec(ids, len(ids), 0, sampling)
    alone = encode_plan(StepPlan(step_id=1)).ByteSize()
    plan = StepPlan.of(1, [PlanEntry(2**40, len(ids), [2**32 - 1], spec)])
    encoded = encode_plan(plan).ByteSize() - alone
    assert encoded <= new_request_bytes(ids, sampling) + 32  # PLAN_ENTRY_BYTES
