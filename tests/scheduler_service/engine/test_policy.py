"""BatchPolicy on a real KVCacheManager, no gRPC: budget, chunking, ordering, preemption."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

import pytest

from yaie.kernels.cache import KVCacheManager
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.policy import BatchPolicy
from yaie.scheduler_service.engine.prefix_sharing import common_prefix_tokens
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig
from yaie.scheduler_service.engine.runs import Runs
from yaie.scheduler_service.engine.sequence import Sequence, SequenceStatus

BS = 4


def _seq(i: int, prompt: list[int], max_new: int = 8, priority: int = 0) -> Sequence:
    request = GenerationRequest(f"r{i}", prompt, SamplingConfig(seed=i), max_new, priority=priority)
    return Sequence(request, i)


def _policy(num_blocks: int = 64, **kw) -> tuple[BatchPolicy, KVCacheManager, list[Sequence]]:
    kv = KVCacheManager(num_blocks, BS)
    preempted: list[Sequence] = []

    def preempt(seq: Sequence) -> None:  # as WorkerLoop does when no plan of seq is in flight
        preempted.append(seq)
        kv.release(seq.token_ids[: seq.num_scheduled], seq.block_ids, seq.match, cache=True)
        seq.reset_incarnation()
        seq.status = SequenceStatus.WAITING

    return BatchPolicy(SchedulerConfig(**kw), kv, preempt), kv, preempted


def _sent(runs: Runs) -> None:
    """What sending the plan and reading its result does to the runs' requests."""
    for run in runs:
        run.seq.num_scheduled += run.num_tokens
        if run.seq.num_scheduled == len(run.seq.token_ids):
            run.seq.token_ids.append(1)  # a sampled token


def test_step_token_budget_mixes_decodes_and_prefill_chunks() -> None:
    """Each step runs <= max_num_batched_tokens: decodes cost 1, prompts go in chunks."""
    policy, _, _ = _policy(max_num_batched_tokens=16, prefill_chunk_size=8)
    running: list[Sequence] = []
    waiting = deque(_seq(i, list(range(100 * i, 100 * i + 20 + i))) for i in range(4))
    seen_mixed = False
    for _ in range(30):
        runs = policy.schedule(running, waiting, blocks_pending=0)
        assert sum(r.num_tokens for r in runs) <= 16
        assert all(r.num_tokens <= 8 for r in runs)
        sizes = {r.num_tokens for r in runs}
        seen_mixed |= 1 in sizes and max(sizes) > 1
        for run in runs:
            assert len(run.seq.block_ids) * BS >= run.seq.num_scheduled + run.num_tokens
        _sent(runs)
    assert seen_mixed and not waiting
    assert all(s.num_output_tokens > 0 for s in running)


def test_longest_cached_prefix_admitted_first() -> None:
    """With one admission slot, the request sharing a cached prefix goes before an older one."""
    policy, kv, _ = _policy(max_running_requests=1)
    shared = list(range(50, 66))
    blocks = kv.allocate(4)
    kv.release(shared, blocks, kv.match_prefix([]))  # 16 tokens cached in the tree
    old, sharer = _seq(0, [1, 2, 3, 4, 5, 6, 7, 8, 9]), _seq(1, shared + [7, 7])
    running: list[Sequence] = []
    runs = policy.schedule(running, deque([old, sharer]), blocks_pending=0)
    assert [r.seq for r in runs] == [sharer]
    assert sharer.num_cached_tokens == 16 and runs[0].num_tokens == 2
    assert sharer.block_ids[:4] == blocks


def test_fully_cached_prompt_still_runs_its_last_token() -> None:
    """A prompt entirely in the tree: num_cached is a multiple of block_size below its length."""
    policy, kv, _ = _policy()
    prompt = list(range(10, 26))  # 16 tokens = 4 full blocks, all cached
    kv.release(prompt, kv.allocate(4), kv.match_prefix([]))
    seq = _seq(0, prompt)
    runs = policy.schedule([], deque([seq]), blocks_pending=0)
    assert seq.num_cached_tokens == 12 and runs[0].num_tokens == 4


def test_request_waiting_too_long_goes_first() -> None:
    """Past max_wait_steps, arrival order beats a longer cached prefix: no starvation."""
    policy, kv, _ = _policy(max_running_requests=1, max_wait_steps=3)
    shared = list(range(50, 66))
    kv.release(shared, kv.allocate(4), kv.match_prefix([]))
    old, sharer = _seq(0, [1, 2, 3]), _seq(1, shared + [9])
    old.queued_at_step = policy.num_steps - 4
    runs = policy.schedule([], deque([old, sharer]), blocks_pending=0)
    assert [r.seq for r in runs] == [old]
    assert policy.wait_steps(sharer) == 1


def test_newest_running_request_is_preempted_when_blocks_run_out() -> None:
    """A decode needing a block in a full pool preempts the newest request, not the oldest."""
    policy, kv, preempted = _policy(num_blocks=6)
    running: list[Sequence] = []
    seqs = [_seq(i, list(range(i, i + 8)), max_new=20) for i in range(3)]  # 2 blocks each
    runs = policy.schedule(running, deque(seqs), blocks_pending=0)
    assert len(runs) == 3 and kv.stats().free_blocks == 0
    _sent(runs)  # each now has 9 tokens: its next decode needs a third block
    runs = policy.schedule(running, deque(), blocks_pending=0)
    assert preempted == [seqs[2]] and running == seqs[:2]
    assert [r.seq for r in runs] == seqs[:2]
    kv.check_integrity()


def test_short_of_blocks_waits_while_retiring_blocks_are_pending() -> None:
    """With blocks about to be freed (plans in flight), nothing is preempted or admitted."""
    policy, kv, preempted = _policy(num_blocks=4)
    running: list[Sequence] = []
    a, b = _seq(0, list(range(8))), _seq(1, [5, 6, 7])
    runs = policy.schedule(running, deque([a]), blocks_pending=0)
    kv.allocate(kv.stats().free_blocks)  # someone else's blocks, freed "later"
    _sent(runs)
    waiting = deque([b])
    assert not policy.schedule(running, waiting, blocks_pending=4)
    assert not preempted and list(waiting) == [b]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_num_batched_tokens": 0},
        {"prefill_chunk_size": 0},
        {"max_wait_steps": -1},
        {"step_timeout_s": 0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    """SchedulerConfig validates on construction."""
    with pytest.raises(ValueError):
        SchedulerConfig(**kwargs)


def test_request_waits_for_a_shared_prompt_being_computed() -> None:
    """Two queued prompts sharing 16 tokens: the second waits until the first's blocks are in
    the tree, then is admitted with them cached."""
    policy, kv, _ = _policy()
    shared = list(range(200, 216))
    a, b = _seq(0, shared + [1, 2]), _seq(1, shared + [3, 4, 5])
    running: list[Sequence] = []
    waiting = deque([a, b])
    runs = policy.schedule(running, waiting, blocks_pending=0)
    assert [r.seq for r in runs] == [a] and list(waiting) == [b]
    policy.cache_prompt(a, len(a.token_ids))  # a's prefill is done: its blocks enter the tree
    _sent(runs)
    runs = policy.schedule(running, waiting, blocks_pending=0)
    assert [r.seq for r in runs] == [a, b] and b.num_cached_tokens == 16
    assert b.block_ids[:4] == a.block_ids[:4]


def _queued(policy: BatchPolicy, seqs: list[Sequence]) -> deque[Sequence]:
    waiting: deque[Sequence] = deque()
    for seq in seqs:
        policy.queue(seq, waiting)
    return waiting


def test_queue_keeps_priority_order_resumed_first_within_theirs() -> None:
    """queue() keeps waiting ordered by priority (FIFO within one); a resumed request goes to
    the front of its own priority, not ahead of higher ones."""
    policy, _, _ = _policy()
    a, b, c, d = (_seq(i, [i + 1], priority=p) for i, p in enumerate([0, 5, 0, 5]))
    waiting = _queued(policy, [a, b, c, d])
    assert list(waiting) == [b, d, a, c]
    resumed = _seq(9, [9], priority=0)
    policy.queue(resumed, waiting, first=True)
    assert list(waiting) == [b, d, resumed, a, c]


def test_higher_priority_is_admitted_before_a_cached_prefix_and_an_overdue_request() -> None:
    """One admission slot: priority beats both the longest cached prefix and the age bound
    (which orders requests within their priority only)."""
    policy, kv, _ = _policy(max_running_requests=1, max_wait_steps=3)
    shared = list(range(50, 66))
    kv.release(shared, kv.allocate(4), kv.match_prefix([]))
    overdue, sharer = _seq(0, [1, 2, 3]), _seq(1, shared + [9])
    urgent = _seq(2, [4, 5, 6], priority=1)
    waiting = _queued(policy, [overdue, sharer, urgent])
    overdue.queued_at_step = policy.num_steps - 10
    runs = policy.schedule([], waiting, blocks_pending=0)
    assert [r.seq for r in runs] == [urgent]


def test_memory_pressure_preempts_the_lowest_priority_first() -> None:
    """A decode short of a block preempts the lowest-priority request, though it is older."""
    policy, kv, preempted = _policy(num_blocks=6)
    low = _seq(0, list(range(8)), max_new=20, priority=-1)
    high = [_seq(i, list(range(i, i + 8)), max_new=20, priority=3) for i in (1, 2)]
    running: list[Sequence] = []
    runs = policy.schedule(running, _queued(policy, [low, *high]), blocks_pending=0)
    assert running == [*high, low] and kv.stats().free_blocks == 0
    _sent(runs)  # each has 9 tokens now: the next decode needs a third block
    runs = policy.schedule(running, deque(), blocks_pending=0)
    assert preempted == [low] and [r.seq for r in runs] == high
    kv.check_integrity()


def test_a_full_batch_makes_room_for_a_higher_priority_request() -> None:
    """max_running_requests reached: a waiting request of higher priority preempts the newest
    of the lowest running ones and is admitted in the same step; one of equal priority waits."""
    policy, kv, preempted = _policy(max_running_requests=3)
    running: list[Sequence] = []
    old = [_seq(i, [i + 1, 2, 3], max_new=20, priority=p) for i, p in enumerate([0, 2, 0])]
    _sent(policy.schedule(running, _queued(policy, old), blocks_pending=0))
    equal = _seq(3, [7, 8], priority=0)
    waiting = _queued(policy, [equal])
    assert [r.seq for r in policy.schedule(running, waiting, blocks_pending=0)] == running
    assert not preempted
    urgent = _seq(4, [9, 9, 9], priority=10)
    policy.queue(urgent, waiting)
    runs = policy.schedule(running, waiting, blocks_pending=0)
    assert preempted == [old[2]], "the newest of the lowest priority"
    assert running == [urgent, old[1], old[0]] and runs[-1].seq is urgent
    assert list(waiting) == [equal]
    kv.check_integrity()


def test_a_higher_priority_request_short_of_blocks_preempts_a_lower_one() -> None:
    """The pool is full of low-priority requests: a higher-priority one preempts as many of
    them as its first chunk needs blocks for (besides their own decodes), and no more."""
    policy, kv, preempted = _policy(num_blocks=6)
    running: list[Sequence] = []
    low = [_seq(i, list(range(i, i + 7)), max_new=4) for i in range(3)]  # 2 blocks each
    _sent(policy.schedule(running, _queued(policy, low), blocks_pending=0))
    assert kv.stats().free_blocks == 0
    urgent = _seq(3, list(range(40, 47)), priority=1)  # 7 tokens: 2 blocks
    runs = policy.schedule(running, _queued(policy, [urgent]), blocks_pending=0)
    assert preempted == [low[2]] and running == [urgent, low[0], low[1]]
    assert [r.seq for r in runs] == [low[0], low[1], urgent]
    kv.check_integrity()


def test_blocks_on_their_way_are_waited_for_not_preempted_for() -> None:
    """With freed blocks pending (a retiring request's plans in flight), a higher-priority
    request short of blocks waits a step instead of preempting."""
    policy, kv, preempted = _policy(num_blocks=4)
    running: list[Sequence] = []
    _sent(policy.schedule(running, _queued(policy, [_seq(0, list(range(7)))]), False))
    kv.allocate(kv.stats().free_blocks)  # a retiring request's, freed "later"
    waiting = _queued(policy, [_seq(1, [5, 6, 7], priority=1)])
    assert [r.seq for r in policy.schedule(running, waiting, blocks_pending=True)] == running
    assert not preempted and len(waiting) == 1


def test_common_prefix_tokens_is_the_leading_run_of_equal_whole_blocks() -> None:
    """The binary search gives what comparing block after block gives, on random prompts."""
    rng = random.Random(0)
    for _ in range(2000):
        bs = rng.choice([1, 2, 4, 16])
        n = rng.randint(0, 80)
        a = [rng.randint(0, 3) for _ in range(n)]
        b = a[: rng.randint(0, n)] + [rng.randint(0, 3) for _ in range(rng.randint(0, 40))]
        limit = rng.randint(0, min(len(a), len(b)))
        common = 0
        while common + bs <= limit and a[common : common + bs] == b[common : common + bs]:
            common += bs
        assert common_prefix_tokens(a, b, limit, bs) == common


def test_hit_estimates_are_matched_again_only_when_their_prefix_changes(monkeypatch) -> None:
    """Blocks entering the tree under one prompt's first block re-match the waiting requests
    that share it, not the others; an eviction re-matches every one."""
    policy, kv, _ = _policy(num_blocks=16)
    shared, other = list(range(200, 208)), list(range(300, 308))
    waiting = [_seq(i, p + [i] * 3) for i, p in enumerate([shared, shared, other])]
    matched: list[int] = []
    real = policy._match
    monkeypatch.setattr(policy, "_match", lambda seq: matched.append(seq.arrival) or real(seq))
    hits = [policy._hit_estimate(s) for s in waiting]
    assert hits == [0, 0, 0] and matched == [0, 1, 2]
    a = _seq(9, shared + [5, 5])
    runs = policy.schedule([], deque([a]), blocks_pending=0)
    policy.cache_prompt(a, len(a.token_ids))
    matched.clear()
    assert [policy._hit_estimate(s) for s in waiting] == [8, 8, 0] and matched == [0, 1]
    matched.clear()
    assert [policy._hit_estimate(s) for s in waiting] == [8, 8, 0] and matched == []
    _sent(runs)
    policy.release(a, cache=True)
    assert kv.evict(16) > 0
    matched.clear()
    assert [policy._hit_estimate(s) for s in waiting] == [0, 0, 0] and matched == [0, 1, 2]


def _full_batch(policy: BatchPolicy, num_running: int, num_waiting: int):
    """num_running requests admitted and decoding, num_waiting more queued behind them."""
    running: list[Sequence] = []
    waiting = deque(_seq(i, [i % 50 + 1] * 3, max_new=100) for i in range(num_running))
    while waiting:
        _sent(policy.schedule(running, waiting, blocks_pending=0))
    queued = [_seq(1000 + i, [7, 8, 9], max_new=100) for i in range(num_waiting)]
    return running, _queued(policy, queued)


def _finish(policy: BatchPolicy, running: list[Sequence], n: int) -> None:
    for seq in running[-n:]:
        running.remove(seq)
        policy.release(seq, cache=False)


def test_a_full_batch_admits_in_waves_bounded_by_the_wave_in_steps() -> None:
    """At 128 running (wave 8): 3 free slots with 10 waiting admit nobody until 8 are free or the
    first waiting request has waited 8 steps; 8 free slots admit at once."""
    policy, _, _ = _policy(num_blocks=2048, max_running_requests=128, admission_wave=8)
    running, waiting = _full_batch(policy, 128, 10)
    _finish(policy, running, 3)
    admitted_at = None
    for step in range(12):
        runs = policy.schedule(running, waiting, blocks_pending=0)
        _sent(runs)
        if any(r.seq.num_scheduled == 3 for r in runs):
            admitted_at = step
            break
    assert admitted_at == 8 and len(waiting) == 7  # after 8 steps of waiting: the bound
    _finish(policy, running, 8)
    runs = policy.schedule(running, waiting, blocks_pending=0)
    assert sum(r.num_tokens == 3 for r in runs) == 7 and not waiting  # the whole queue fits


def test_admission_waves_stay_out_of_the_way_of_light_load_and_priority() -> None:
    """Free slots enough for the queue, admission_wave 1 (the default), small batches (under 32
    running) and a request that outranks a running one are all admitted at once."""
    for kw, num_running, priority in (
        ({"max_running_requests": 128, "admission_wave": 8}, 120, 0),  # 8 free, 2 waiting
        ({"max_running_requests": 128}, 127, 0),
        ({"max_running_requests": 24, "admission_wave": 8}, 23, 0),
        ({"max_running_requests": 128, "admission_wave": 8}, 127, 5),
    ):
        policy, _, _ = _policy(num_blocks=2048, **kw)
        running, waiting = _full_batch(policy, num_running, 2)
        for seq in waiting:
            seq.request = replace(seq.request, priority=priority)
        runs = policy.schedule(running, waiting, blocks_pending=0)
        assert any(r.num_tokens == 3 for r in runs), kw
