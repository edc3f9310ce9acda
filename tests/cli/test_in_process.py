"""The in-process worker (yaie.cli.in_process): the engine over it samples exactly the tokens of
the engine over the same worker through gRPC; abandoning its stream drops the worker's requests;
a silent worker raises WorkerHungError; `yaie in-process` serves the public API and exits 0 on
SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from yaie.cli.in_process import InProcessWorkerClient
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.request import GenerationRequest, SamplingConfig
from yaie.scheduler_service.workers.step_plan import NewRequestSpec, PlanEntry, StepPlan
from yaie.scheduler_service.workers.worker_client import WorkerHungError, WorkerStreamError
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

torch = pytest.importorskip("torch")
BLOCK_SIZE, NUM_BLOCKS = 4, 64
PROMPTS = [[11, 42, 7, 300, 12, 99], [5, 6, 7], [11, 42, 7, 300, 12, 99, 1, 2, 3, 4, 5]]
NUM_NEW = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from yaie.cli.models.random_model import write_random_model

    return write_random_model(tmp_path_factory.mktemp("llama"), "LlamaForCausalLM", seed=3)


def _worker_config(model_dir: Path):
    from yaie.worker_service.config import WorkerConfig

    return WorkerConfig(
        str(model_dir), port=0, device="cpu", block_size=BLOCK_SIZE, num_blocks=NUM_BLOCKS
    )


@pytest.fixture(scope="module")
def servicer(model_dir: Path):
    from yaie.worker_service.app import build_runner
    from yaie.worker_service.server import WorkerServicer

    loaded = WorkerServicer()
    loaded.load(*build_runner(_worker_config(model_dir)))
    return loaded


def _generate(address: str, factory: Callable | None, temperature: float) -> list[list[int]]:
    """Every prompt at once through an Engine (overlap on); the tokens of each."""

    async def main() -> list[list[int]]:
        kwargs = {} if factory is None else {"client_factory": factory}
        engine = Engine([address], SchedulerConfig(max_num_batched_tokens=8), **kwargs)
        await engine.start()
        try:
            sampling = [SamplingConfig(temperature=temperature, seed=i) for i in range(3)]
            streams = [
                engine.submit(GenerationRequest(f"r{i}", prompt, sampling[i], NUM_NEW))
                for i, prompt in enumerate(PROMPTS)
            ]
            return list(await asyncio.gather(*(_tokens(s) for s in streams)))
        finally:
            await engine.stop()

    return asyncio.run(main())


async def _tokens(stream) -> list[int]:
    tokens = []
    async for event in stream:
        assert event.error is None, event.error
        tokens += event.token_ids
    return tokens


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_in_process_engine_samples_the_tokens_of_the_grpc_split(model_dir, servicer, temperature):
    from yaie.worker_service.app import start_worker

    worker = start_worker(_worker_config(model_dir))
    try:
        split = _generate(f"127.0.0.1:{worker.port}", None, temperature)
    finally:
        worker.stop(grace=None)
    in_process = _generate("in-process", lambda a: InProcessWorkerClient(servicer, a), temperature)
    assert in_process == split
    assert all(len(tokens) == NUM_NEW for tokens in in_process)
    if temperature == 0.0:  # and greedy is transformers' greedy
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        ids = torch.tensor([PROMPTS[0]])
        greedy = dict(do_sample=False, max_new_tokens=NUM_NEW, eos_token_id=None, pad_token_id=0)
        out = hf.eval().generate(ids, attention_mask=torch.ones_like(ids), **greedy)
        assert in_process[0] == out[0, len(PROMPTS[0]) :].tolist()


def _entry(request_id: int, prompt: list[int] | None, num_tokens: int, blocks: list[int]):
    spec = None if prompt is None else NewRequestSpec(prompt, len(prompt), 0, SamplingConfig(0.0))
    return PlanEntry(request_id, num_tokens, blocks, spec)


def test_abandoned_stream_drops_the_workers_requests_and_fails_a_read(servicer, monkeypatch):
    tables = []  # the request table of each stream the servicer opens
    new_table = servicer.runner.new_table

    def recorded_table():
        tables.append(new_table())
        return tables[-1]

    monkeypatch.setattr(servicer.runner, "new_table", recorded_table)

    async def main() -> None:
        client = InProcessWorkerClient(servicer)
        client.open_stream()
        call = client._call
        first = StepPlan.of(1, [_entry(1, PROMPTS[0], 6, [0, 1]), _entry(2, PROMPTS[1], 3, [2])])
        await client.send(first)
        assert min((await client.receive(first, 30.0)).token_ids) >= 0
        decode = StepPlan.of(2, [_entry(1, None, 1, []), _entry(2, None, 1, [])])
        await client.send(decode)
        assert len((await client.receive(decode, 30.0)).token_ids) == 2
        assert len(tables[-1]) == 2  # both requests live on the worker
        read = asyncio.create_task(client.receive(decode, 30.0))  # no plan in flight: waits
        await asyncio.sleep(0.05)
        client.abandon_stream()
        with pytest.raises(WorkerStreamError, match="cancelled"):
            await read
        with pytest.raises(WorkerStreamError, match="abandoned"):
            await client.send(StepPlan.of(3, [_entry(1, None, 1, [])]))
        await asyncio.to_thread(call.thread.join, 10.0)
        assert not call.thread.is_alive() and len(tables[-1]) == 0
        await client.close()

    asyncio.run(main())


def test_receive_timeout_raises_worker_hung_and_the_stream_still_works(servicer):
    async def main() -> None:
        client = InProcessWorkerClient(servicer)
        assert await client.health(1.0) == "SERVING"
        assert (await client.describe(1.0)).num_blocks == NUM_BLOCKS
        client.open_stream()
        plan = StepPlan.of(1, [_entry(1, PROMPTS[1], 3, [0])])
        with pytest.raises(WorkerHungError):
            await client.receive(plan, 0.1)  # nothing sent: no result comes
        await client.send(plan)
        outcome = await client.receive(plan, 30.0)
        assert outcome.step_id == 1 and outcome.token_ids[0] >= 0
        await client.close()

    asyncio.run(main())


def test_command_serves_the_public_api_and_exits_0_on_sigterm(model_dir, tools):
    port = tools.free_port()
    command = tools.yaie(
        "in-process",
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--port",
        str(port),
        "--num-blocks",
        "32",
        "--log-level",
        "WARNING",
    )
    target = f"127.0.0.1:{port}"
    process = tools.start_serving(command, target, 60.0)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            request = pb.GenerateRequest(
                token_ids=pb.TokenIds(ids=PROMPTS[0]),
                sampling=pb.SamplingParams(temperature=0.0),
                stopping=pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True),
            )
            frames = list(stub.Generate(request, timeout=30))
            stats = stub.GetServerStats(pb.GetServerStatsRequest(), timeout=10)
        assert sum(len(f.token_ids) for f in frames) == 4
        assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert [w.address for w in stats.workers] == ["in-process"]
        assert stats.workers[0].total_blocks == 32
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
