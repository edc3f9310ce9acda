"""The engine driving a real worker (tiny random Llama on the CPU): scheduling choices never
change the output. Greedy and seeded-sampled tokens are the same with the prefix cache, chunked
prefill, overlap and preemption as in the plainest setting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fake_worker import collect

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from yaie.cli.models.random_model import write_random_model

    return write_random_model(tmp_path_factory.mktemp("llama"), "LlamaForCausalLM", seed=0)


def _outputs(model_dir: Path, num_blocks: int, config: SchedulerConfig, temperature: float):
    from yaie.worker_service.app import start_worker
    from yaie.worker_service.config import WorkerConfig

    worker = start_worker(
        WorkerConfig(
            model=str(model_dir), port=0, device="cpu", block_size=4, num_blocks=num_blocks
        )
    )

    async def main() -> tuple[list[list[int]], int, list[int]]:
        engine = Engine([f"127.0.0.1:{worker.port}"], config)
        await engine.start()
        try:
            vocab = engine.model_info.vocab_size
            shared = [(j * 13 + 5) % vocab for j in range(24)]
            reqs = [
                GenerationRequest(
                    f"r{i}",
                    shared + [(i * 31 + j * 7) % vocab for j in range(1 + 3 * i)],
                    SamplingConfig(temperature=temperature, seed=i),
                    10 + i,
                )
                for i in range(6)
            ]
            results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
            assert all(events[-1].error is None for _, events in results)
            stats = engine.stats()
            assert stats.workers[0].used_blocks == 0
            cached = [events[-1].num_cached_tokens for _, events in results]
            return [tokens for tokens, _ in results], stats.num_preemptions, cached
        finally:
            await engine.stop()

    try:
        return asyncio.run(main())
    finally:
        worker.stop(grace=None)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_real_worker_output_independent_of_scheduling(model_dir: Path, temperature: float) -> None:
    """Same tokens with cache + overlap + 8-token chunks + a pool that forces preemption as with
    no cache, no overlap and a large pool."""
    plain = SchedulerConfig(enable_prefix_cache=False, enable_overlap=False)
    expected, _, _ = _outputs(model_dir, 512, plain, temperature)
    busy = SchedulerConfig(max_num_batched_tokens=8)
    tokens, preemptions, cached = _outputs(model_dir, 28, busy, temperature)
    assert tokens == expected
    assert preemptions > 0 and max(cached) >= 20
