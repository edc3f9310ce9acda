"""GenerateRequest.priority through the public gRPC API: GetServerStats lists the waiting and
running requests per priority, and the higher priority is admitted first."""

from __future__ import annotations

import asyncio

from fake_worker import FakeWorkerConfig, engine_on_fake_workers
from served_stack import public_stub

from yaie.scheduler_service.config import SchedulerConfig
from yaie.v1 import generation_pb2 as pb


def test_server_stats_per_priority_and_the_higher_one_first(tokenizer) -> None:
    config = SchedulerConfig(max_running_requests=1)
    worker = FakeWorkerConfig(vocab_size=768, max_context=256, step_delay_s=0.01)

    def request(i: int, priority: int) -> pb.GenerateRequest:
        return pb.GenerateRequest(
            request_id=f"p{i}",
            token_ids=pb.TokenIds(ids=[5 + i, 6, 7]),
            stopping=pb.StoppingCriteria(max_new_tokens=6, ignore_eos=True),
            priority=priority,
        )

    async def main() -> None:
        async with engine_on_fake_workers(config, worker) as (engine, _):
            async with public_stub(engine, tokenizer) as stub:
                finished: list[str] = []

                async def run(message: pb.GenerateRequest) -> None:
                    async for frame in stub.Generate(message, timeout=30):
                        if frame.finish_reason:
                            finished.append(frame.request_id)

                first = asyncio.create_task(run(request(0, 10)))  # not preempted by 9
                while engine.stats().running == 0:
                    await asyncio.sleep(0.002)
                rest = [asyncio.create_task(run(request(i, p))) for i, p in [(1, -3), (2, 9)]]
                while engine.stats().waiting < 2:
                    await asyncio.sleep(0.002)
                stats = await stub.GetServerStats(pb.GetServerStatsRequest(), timeout=10)
                by_priority = [(p.priority, p.waiting, p.running) for p in stats.priorities]
                assert by_priority == [(10, 0, 1), (9, 1, 0), (-3, 1, 0)]
                await asyncio.gather(first, *rest)
                assert finished == ["p0", "p2", "p1"]
                stats = await stub.GetServerStats(pb.GetServerStatsRequest(), timeout=10)
                assert list(stats.priorities) == []

    asyncio.run(main())
