"""Deterministic (batch-invariant) mode end to end: the engine over a real worker (tiny random
Llama; fp32 on the CPU, bf16 with Triton kernels and CUDA graphs on a GPU) with deterministic
on. One seeded request's tokens and logprobs (top ones too) are equal bit for bit alone, among
1 to 64 other random requests, with its prompt in chunks of several sizes, and with its prefix
from the cache. The CUDA case skips without a GPU; a third case, run only under
TRITON_INTERPRET=1 (minutes: `TRITON_INTERPRET=1 pytest <this file>`), drives the Triton
attention kernels on the CPU, whose extend and decode paths differ as on a GPU."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch
from fake_worker import collect

from tests.kernels.triton_modes import INTERPRET
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig

CUDA = torch.cuda.is_available() and not INTERPRET
# (device, attention backend) of the worker
WORKERS = [
    pytest.param(("cpu", "auto"), id="cpu"),
    pytest.param(("cuda", "auto"), id="cuda", marks=pytest.mark.skipif(not CUDA, reason="CUDA")),
    pytest.param(
        ("cpu", "triton"),
        id="triton-interpreter",
        marks=pytest.mark.skipif(not INTERPRET, reason="runs under TRITON_INTERPRET=1"),
    ),
]
# (other requests, prefill chunk size). The prompt, 71 = 10 x 7 + 1 (a one-token last chunk), is
# longer than two of Triton extend attention's 32-key tiles, so later chunks (and a prompt after a
# cached prefix) start past whole tiles, as real prompts do.
BATCHES = [(1, 2048), (2, 7), (7, 5), (64, 3)]
PROMPT_LEN, MAX_NEW, CACHED = 71, 6, 48


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from yaie.cli.models.random_model import write_random_model

    return write_random_model(tmp_path_factory.mktemp("llama"), "LlamaForCausalLM", seed=3)


def _target(vocab: int) -> GenerationRequest:
    prompt = [(j * 17 + 3) % vocab for j in range(PROMPT_LEN)]
    sampling = SamplingConfig(temperature=0.9, seed=11, top_logprobs=3, return_logprobs=True)
    return GenerationRequest("target", prompt, sampling, MAX_NEW)


def _others(n: int, vocab: int, seed: int) -> list[GenerationRequest]:
    rng = random.Random(seed)
    return [
        GenerationRequest(
            f"o{seed}-{i}",
            [rng.randrange(vocab) for _ in range(rng.randint(3, 40))],
            SamplingConfig(temperature=rng.choice([0.0, 1.0]), seed=i),
            rng.randint(1, 8),
        )
        for i in range(n)
    ]


def _fingerprint(events) -> list[tuple]:
    """Every generated token with its logprob and top alternatives (floats compared exactly)."""
    return [(lp.token_id, lp.logprob, tuple(lp.top)) for event in events for lp in event.logprobs]


@pytest.fixture(scope="module", params=WORKERS)
def worker_port(request: pytest.FixtureRequest, model_dir: Path):
    """A deterministic worker of request.param, shared by the scenarios (each scenario's engine
    starts with an empty prefix cache of its own)."""
    from yaie.worker_service.app import start_worker
    from yaie.worker_service.config import WorkerConfig

    config = WorkerConfig(
        model=str(model_dir),
        port=0,
        device=request.param[0],
        attention_backend=request.param[1],
        block_size=4,
        num_blocks=1024,
        deterministic=True,
    )
    worker = start_worker(config)
    yield worker.port
    worker.stop(grace=None)


def _run(port: int, config: SchedulerConfig, scenario: str, num_others: int = 0):
    """The target's fingerprint under scenario: "alone", "batch" (among num_others random
    requests, some before it and some after), "cached" (a warm-up request shares its first CACHED
    prompt tokens, computed in other chunks, first)."""

    async def main() -> tuple[list[tuple], int]:
        engine = Engine([f"127.0.0.1:{port}"], config)
        await engine.start()
        try:
            vocab = engine.model_info.vocab_size
            target = _target(vocab)
            if scenario == "cached":
                warm = GenerationRequest(
                    "warm", target.prompt_ids[:CACHED] + [5, 6, 7], SamplingConfig(seed=1), 2
                )
                await collect(engine.submit(warm))
            others = _others(num_others, vocab, seed=num_others)
            half = len(others) // 2
            tasks = [asyncio.create_task(collect(engine.submit(r))) for r in others[:half]]
            await asyncio.sleep(0)  # the first ones are admitted before the target
            found = collect(engine.submit(target))
            tasks += [asyncio.create_task(collect(engine.submit(r))) for r in others[half:]]
            _, events = await found
            await asyncio.gather(*tasks)
            return _fingerprint(events), events[-1].num_cached_tokens
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_logprobs_are_bit_identical_across_batches_chunkings_and_cache_hits(
    worker_port: int,
) -> None:
    alone, _ = _run(worker_port, SchedulerConfig(enable_prefix_cache=False), "alone")
    assert len(alone) == MAX_NEW
    for num_others, chunk in BATCHES[1:3] if INTERPRET else BATCHES:
        config = SchedulerConfig(prefill_chunk_size=chunk, max_num_batched_tokens=max(chunk, 16))
        found, _ = _run(worker_port, config, "batch", num_others)
        assert found == alone, f"among {num_others} others, chunks of {chunk}"
    for chunk in (2048, 7):
        config = SchedulerConfig(prefill_chunk_size=chunk)
        found, cached = _run(worker_port, config, "cached")
        assert cached == CACHED and found == alone, f"cached prefix, chunks of {chunk}"
