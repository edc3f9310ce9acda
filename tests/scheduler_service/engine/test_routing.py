"""Routing between workers (fake workers): requests follow their cached or routed prefix, and
load spreads requests with nothing to share, so no worker idles while another queues."""

from __future__ import annotations

import asyncio
import random

from fake_worker import FakeWorkerConfig, collect, engine_on_fake_workers, reference_output

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig
from yaie.scheduler_service.engine.router import PrefixIndex

VOCAB = FakeWorkerConfig().vocab_size


def _group_requests(num_groups: int, per_group: int) -> list[GenerationRequest]:
    """per_group requests for each of num_groups 64-token prefixes, arriving in a shuffled
    order (a fixed one: round-robin arrival would split the groups evenly by load alone)."""
    reqs = []
    for r in range(per_group):
        for g in range(num_groups):
            prefix = [(g * 53 + j * 7 + 1) % VOCAB for j in range(64)]
            suffix = [(g + r * 13 + j) % VOCAB for j in range(6)]
            reqs.append(GenerationRequest(f"g{g}r{r}", prefix + suffix, SamplingConfig(seed=g), 8))
    random.Random(0).shuffle(reqs)
    return reqs


async def _hit_rate(reqs: list[GenerationRequest], *workers: FakeWorkerConfig) -> float:
    """Cached prompt tokens / prompt tokens over reqs, all submitted at once; outputs exact."""
    async with engine_on_fake_workers(SchedulerConfig(), *workers) as (engine, handles):
        results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
        for req, (tokens, _) in zip(reqs, results, strict=True):
            expected = reference_output(req.prompt_ids, req.sampling.seed, 8, VOCAB)
            assert tokens == expected
        assert all(h.worker.num_new_requests > 0 and not h.worker.violations for h in handles)
        cached = sum(events[-1].num_cached_tokens for _, events in results)
        return cached / sum(len(r.prompt_ids) for r in reqs)


def test_two_workers_hit_the_cache_as_often_as_one_with_the_same_total_pool() -> None:
    """8 groups of 4 requests sharing a 64-token prefix: two workers of 128 blocks reach at
    least the hit rate of one worker of 256 blocks (each group stays on one worker; routing by
    load alone reaches 0.46 here, one worker 0.69)."""
    reqs = _group_requests(8, 4)
    one = asyncio.run(_hit_rate(reqs, FakeWorkerConfig(num_blocks=256)))
    half = FakeWorkerConfig(num_blocks=128)
    two = asyncio.run(_hit_rate(reqs, half, half))
    assert one > 0.6 and two >= one


def test_requests_with_nothing_shared_spread_evenly() -> None:
    """32 unrelated prompts over two workers: each worker takes half (by load)."""
    reqs = [
        GenerationRequest(
            f"u{i}", [(i * 31 + j * 17 + 3) % VOCAB for j in range(20)], SamplingConfig(seed=i), 4
        )
        for i in range(32)
    ]

    async def main() -> list[int]:
        async with engine_on_fake_workers(
            SchedulerConfig(), FakeWorkerConfig(), FakeWorkerConfig()
        ) as (engine, handles):
            await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            return [h.worker.num_new_requests for h in handles]

    assert asyncio.run(main()) == [16, 16]


def test_prefix_index_matches_whole_routed_blocks_and_forgets_the_oldest() -> None:
    """match() counts whole blocks of a routed prefix (per namespace); past its capacity the
    least recently routed blocks are forgotten."""
    index = PrefixIndex(block_size=4, capacity=4)
    index.insert(list(range(10)), "")
    assert index.match(list(range(10)), "") == 8
    assert index.match([0, 1, 2, 3, 9, 9, 9, 9], "") == 4
    assert index.match(list(range(10)), "other") == 0
    index.insert([50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61], "")  # 3 more blocks
    assert index.match(list(range(10)), "") == 0  # its first block was the oldest
