"""The scheduler's own time per step at B running requests, on the CPU, against a worker that
costs (almost) nothing.

The real Engine (policy, step stream, worker loop, events) runs over `NullWorkerClient`, an
in-process client with WorkerClient's interface: each plan is encoded to protobuf and
serialized as the gRPC write would (that cost is the scheduler's), the "worker" answers every
entry at once with a token that depends only on the request's known tokens (so output does not
depend on batching or preemption), and the result goes through protobuf and `decode_result` as
it would off the wire. The per-step fields come from the engine's own step trace
(ops/step_trace.py, YAIE_STEP_TRACE): schedule_ms, send_ms, process_ms, as means (us per row)
and the median step. `wall` is the median period between step results: everything the process
does per step (the three above, result decoding, the readers, the null worker's few us per
row). `--clock cpu` makes the trace's clock the thread's CPU time (steadier where other
processes share the cores; the default, wall time, is the trace as served).

Workload (SGLang's generated-shared-prefix shape by default): B clients in a closed loop, each
submitting its next request when the last one ends, 2B requests in all; a request is one of
`--groups` system prompts (`--prefix-len` tokens) + a `--question-len` question, with
U[out/2, out] output tokens (ignore_eos), so requests finish and are admitted all the time:
steps with prefill tokens (admissions) and decode-only steps at ~B rows. Steps are counted
once B requests run (the first admission wave is left out). `--at-once` submits all 2B at the
start instead, as bench_stack's shared-prefix stage does, and counts every step: the first
wave's steps admit dozens of requests each.

As the server does once started (app.py), the startup heap is frozen out of the garbage
collector (gc.freeze) before the clients start.

Readers (`--frontend`): `engine` reads the engine's events directly; `stream` runs each request
through the public request path (api/frontend.py: validation, OutputStream, incremental
detokenization with the built-in BPE tokenizer covering the vocabulary), as the gRPC servicer
does per frame, minus the transport. The null worker's write yields to the event loop once, so
the readers' work lands in send_ms as it does in the served stack.

    python benchmarks/bench_scheduler_step.py --batch 512
    python benchmarks/bench_scheduler_step.py --batch 128 256 512 --frontend engine stream
    python benchmarks/bench_scheduler_step.py --batch 512 --profile 25   # + cProfile, top 25

The printed `output sha` is a digest of every request's tokens: equal across code versions
means the scheduler produced the same output token for token.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import json
import os
import pstats
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace

from yaie.kernels.sampling.config import SamplingConfig
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.request import GenerationRequest
from yaie.scheduler_service.ops.step_trace import ENV
from yaie.scheduler_service.workers.step_plan import StepOutcome, StepPlan, WorkerDescription
from yaie.scheduler_service.workers.worker_client import decode_result, encode_plan
from yaie.worker.v1 import worker_pb2

HERE = Path(__file__).resolve().parent
VOCAB, BLOCK_SIZE, MAX_CONTEXT = 32000, 16, 8192


class NullWorkerClient:
    """WorkerClient's interface over no model: every run entry is computed at once; an entry
    that reaches its request's last known token samples hash(last token, position)."""

    def __init__(self, address: str, num_blocks: int) -> None:
        self.address = address
        self.num_blocks = num_blocks
        self._state: dict[int, list[int]] = {}  # request id -> [known, computed, last token]
        self._sent: deque[bytes] = deque()

    async def describe(self, timeout: float) -> WorkerDescription:
        return WorkerDescription(
            self.address, "null", "NullForCausalLM", "bfloat16", "cpu", VOCAB, MAX_CONTEXT,
            BLOCK_SIZE, self.num_blocks, True, "none", "bfloat16", 0,
        )  # fmt: skip

    def open_stream(self) -> None:
        self._state.clear()
        self._sent.clear()

    def abandon_stream(self) -> None:
        pass

    async def health(self, timeout: float) -> str:
        return "SERVING"

    async def send(self, plan: StepPlan) -> None:
        self._sent.append(encode_plan(plan).SerializeToString())  # what grpc.aio's write does
        await asyncio.sleep(0)  # and the write yields to the event loop (the readers run)

    async def receive(self, plan: StepPlan, timeout: float) -> StepOutcome:
        await asyncio.sleep(0)  # a read yields to the event loop
        self._sent.popleft()
        state = self._state
        for rid in plan.release_ids:
            state.pop(rid, None)
        for request_id, spec in plan.new_requests:
            state[request_id] = [len(spec.token_ids), spec.num_cached_tokens, spec.token_ids[-1]]
        tokens = []
        for request_id, n in zip(plan.request_ids, plan.num_tokens, strict=True):
            s = state[request_id]
            s[1] += n
            token = -1
            if s[1] == s[0]:
                token = (s[2] * 1_000_003 + s[0] * 7_919 + 17) % VOCAB
                s[0] += 1
                s[2] = token
            tokens.append(token)
        wire = worker_pb2.StepResult(step_id=plan.step_id, token_ids=tokens).SerializeToString()
        return decode_result(worker_pb2.StepResult.FromString(wire), plan)

    async def close(self) -> None:
        pass


def workload(args: argparse.Namespace, batch: int) -> list[tuple[list[int], int]]:
    """(prompt, max_new_tokens) of each request, in submission order (deterministic)."""
    rng = random.Random(args.seed)
    prefixes = [[rng.randrange(VOCAB) for _ in range(args.prefix_len)] for _ in range(args.groups)]
    out = []
    for i in range(args.requests_per_client * batch):
        question = [rng.randrange(VOCAB) for _ in range(args.question_len)]
        out.append(
            (
                prefixes[i % args.groups] + question,
                rng.randint(args.output_len // 2, args.output_len),
            )
        )
    return out


async def run_engine(args: argparse.Namespace, batch: int, frontend: str, trace: Path) -> dict:
    os.environ[ENV] = str(trace)
    num_blocks = batch * (args.prefix_len + args.question_len + args.output_len) // BLOCK_SIZE * 2
    config = SchedulerConfig(max_running_requests=batch, max_queue_size=max(4096, 4 * batch))
    engine = Engine(["null"], config, lambda address: NullWorkerClient(address, num_blocks))
    await engine.start()
    requests = deque(enumerate(workload(args, batch)))
    outputs: dict[int, list[int]] = {}
    front = None
    if frontend == "stream":
        from yaie.scheduler_service.api.frontend import Frontend

        front = Frontend(engine, tokenizer(args))
    # As the server does once it has started (app.py: serve): the startup heap frozen.
    gc.collect()
    gc.freeze()

    async def one(i: int, prompt: list[int], max_new: int) -> None:
        sampling = SamplingConfig(temperature=0.0, seed=i)
        if front is None:
            req = GenerationRequest(f"r{i}", prompt, sampling, max_new)
            tokens: list[int] = []
            async for event in engine.submit(req):
                tokens += event.token_ids
        else:
            tokens = await through_frontend(front, f"r{i}", prompt, max_new)
        assert len(tokens) == max_new, (i, len(tokens), max_new)
        outputs[i] = tokens

    async def client() -> None:
        while requests:
            i, (prompt, max_new) = requests.popleft()
            await one(i, prompt, max_new)

    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    # --at-once: every request submitted at the start (bench_stack's shared-prefix shape: the
    # queue holds the rest while B run), else B clients in a closed loop
    num_clients = len(requests) if args.at_once else batch
    clients = [asyncio.create_task(client()) for _ in range(num_clients)]
    if profiler is not None:
        profiler.enable()
    await asyncio.gather(*clients)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - started
    await engine.stop()
    gc.unfreeze()
    del os.environ[ENV]
    digest = hashlib.sha256(json.dumps([outputs[i] for i in sorted(outputs)]).encode())
    return {"elapsed_s": elapsed, "sha": digest.hexdigest()[:16], "profiler": profiler}


async def through_frontend(front, request_id: str, prompt: list[int], max_new: int) -> list[int]:
    from yaie.v1 import generation_pb2 as pb

    request = pb.GenerateRequest(
        request_id=request_id,
        token_ids=pb.TokenIds(ids=prompt),
        sampling=pb.SamplingParams(temperature=0.0, seed=int(request_id[1:])),
        stopping=pb.StoppingCriteria(max_new_tokens=max_new, ignore_eos=True),
    )
    tokens: list[int] = []
    async for frame in front.generate(request):
        tokens += frame.token_ids
    return tokens


_TOKENIZER = None


def tokenizer(args: argparse.Namespace):
    """The built-in BPE tokenizer with a text for every id of VOCAB (made once per process)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        sys.path.insert(0, str(HERE))
        from stack_models import cover_vocab

        from yaie.cli.models.random_model import write_tokenizer
        from yaie.scheduler_service.api.tokenizer import Tokenizer

        root = Path(tempfile.mkdtemp(prefix="bench-step-tok-"))
        write_tokenizer(root, model_max_length=MAX_CONTEXT)
        cover_vocab(root, VOCAB)
        _TOKENIZER = Tokenizer(root)
    return _TOKENIZER


def steady_steps(
    trace: Path, batch: int, from_start: bool = False
) -> tuple[list[dict], list[dict]]:
    """(decode-only, with-prefill) steps from the first one planned with B running on (from
    the first step when from_start: the first admission wave counted)."""
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    start = next((k for k, s in enumerate(lines) if s["running"] >= batch), len(lines))
    start = 0 if from_start else start
    # up to the last step with B running (the tail drains the batch)
    end = max((k for k, s in enumerate(lines) if s["running"] >= batch), default=start) + 1
    steady = lines[start:end]
    return [s for s in steady if not s["prefill_tokens"]], [
        s for s in steady if s["prefill_tokens"]
    ]


def mean(steps: list[dict], key: str) -> float:
    return sum(s[key] for s in steps) / len(steps) if steps else float("nan")


def median_total(steps: list[dict]) -> float:
    """Median of schedule + send + process (ms): a garbage collection pause left out."""
    totals = sorted(s["schedule_ms"] + s["send_ms"] + s["process_ms"] for s in steps)
    return totals[len(totals) // 2]


def wall_per_step(steps: list[dict]) -> float:
    """Median gap between consecutive results (ms): the loop's period with a free worker."""
    t = sorted(s["t_result"] for s in steps)
    gaps = sorted(b - a for a, b in zip(t, t[1:], strict=False))
    return gaps[len(gaps) // 2] * 1e3 if gaps else float("nan")


def report(batch: int, frontend: str, result: dict, trace: Path, from_start: bool) -> None:
    decode, prefill = steady_steps(trace, batch, from_start)
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    for name, steps in (("decode", decode), ("prefill", prefill)):
        if not steps:
            continue
        sched, send, proc = (mean(steps, k) for k in ("schedule_ms", "send_ms", "process_ms"))
        rows = mean(steps, "entries")
        print(
            f"B={batch:4d} {frontend:6s} {name:7s} steps {len(steps):4d} rows {rows:6.1f} "
            f"tokens {mean(steps, 'tokens'):7.1f} | schedule {sched:6.2f} send {send:6.2f} "
            f"process {proc:6.2f} = {sched + send + proc:6.2f} ms "
            f"({1e3 * (sched + send + proc) / rows:5.1f} us/row; "
            f"median {median_total(steps):6.2f}) | wall {wall_per_step(steps):6.2f} ms"
        )
    took = f"{len(lines)} steps in {result['elapsed_s']:.1f} s"
    print(f"B={batch:4d} {frontend:6s} all {took}, output sha {result['sha']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--batch", type=int, nargs="+", default=[512], help="running requests B")
    parser.add_argument("--frontend", nargs="+", choices=["engine", "stream"], default=["engine"])
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--prefix-len", type=int, default=2048)
    parser.add_argument("--question-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--at-once",
        action="store_true",
        help="submit every request at the start (a queue of B while B run, as bench_stack's "
        "shared-prefix stage) instead of a closed loop of B clients; the steps are counted "
        "from the first (the first admission wave included)",
    )
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N (0: off)")
    parser.add_argument("--keep-trace", default="", help="directory to keep the step traces in")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="the step trace's clock: wall (as served) or this thread's CPU time (steadier on a "
        "shared machine: time other processes take is left out)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        from yaie.scheduler_service.engine import worker_loop

        worker_loop.time = SimpleNamespace(perf_counter=time.thread_time)
    arrival = "all at once" if args.at_once else "closed loop of B clients"
    print(
        f"workload: {args.groups} groups x {args.prefix_len} prefix + {args.question_len} "
        f"question, "
        f"U[{args.output_len // 2}, {args.output_len}] out, {args.requests_per_client}B requests, "
        f"{arrival}; python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}"
    )
    for batch in args.batch:
        for frontend in args.frontend:
            tmp = Path(args.keep_trace or tempfile.mkdtemp(prefix="bench-step-"))
            tmp.mkdir(parents=True, exist_ok=True)
            trace = tmp / f"steps-b{batch}-{frontend}.jsonl"
            trace.unlink(missing_ok=True)
            result = asyncio.run(run_engine(args, batch, frontend, trace))
            report(batch, frontend, result, trace, args.at_once)
            if result["profiler"] is not None:
                stats = pstats.Stats(result["profiler"]).sort_stats("tottime")
                stats.print_stats(args.profile)
                stats.sort_stats("cumulative").print_stats(r"policy\.py", args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
