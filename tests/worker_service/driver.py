"""A naive scheduler that drives a worker over a real Step stream, for the worker's tests.

Blocks come from a free list; each step runs every admitted request (a prefill chunk of at most
`chunk` tokens, or one decode token) and waits for its result (lock-step), unless a test sends
plans by hand through StepStream. Also: a worker in this process (start_cpu_worker) or the
command line of one as a child process (worker_command), and transformers' greedy reference.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field

import grpc

from yaie.kernels.sampling import SamplingConfig
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc
from yaie.worker_service.python_child import module_command

# Every option off but temperature 0, as the wire carries it (a proto3 zero is not "unset").
GREEDY = SamplingConfig(temperature=0.0).message_fields()


def sampling(**overrides: object) -> worker_pb2.SamplingParams:
    return worker_pb2.SamplingParams(**{**GREEDY, **overrides})


class StepStream:
    """One Step stream: send() plans (step ids assigned in order), recv() results in order."""

    def __init__(
        self, channel: grpc.Channel, timeout: float = 60.0, scheduler_id: str | None = None
    ) -> None:
        """scheduler_id: sent as the stream's yaie-scheduler-id (None: no such metadata)."""
        self._plans: queue.Queue = queue.Queue()
        stub = worker_pb2_grpc.WorkerStub(channel)
        metadata = None if scheduler_id is None else (("yaie-scheduler-id", scheduler_id),)
        self._results = stub.Step(iter(self._plans.get, None), timeout=timeout, metadata=metadata)
        self.next_step_id = 1

    def send(self, **fields) -> int:
        step_id = fields.pop("step_id", self.next_step_id)
        self.next_step_id = max(self.next_step_id, step_id + 1)
        self._plans.put(worker_pb2.StepPlan(step_id=step_id, **fields))
        return step_id

    def recv(self) -> worker_pb2.StepResult:
        return next(self._results)

    def step(self, **fields) -> worker_pb2.StepResult:
        step_id = self.send(**fields)
        result = self.recv()
        assert result.step_id == step_id
        return result

    def close(self) -> None:
        self._plans.put(None)
        for _ in self._results:  # drain: the worker answers every plan sent before the close
            pass


@dataclass
class Seq:
    """A request as the driver sees it: all known tokens, counters, blocks."""

    request_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    max_new_tokens: int
    params: worker_pb2.SamplingParams = field(default_factory=sampling)
    chunk: int = 1 << 30  # most tokens per prefill step
    cached_blocks: list[int] = field(default_factory=list)  # prefix blocks written earlier
    keep_blocks: bool = False  # finishing leaves the blocks allocated (a later prefix hit)
    num_cached_tokens: int = 0
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    num_sent_blocks: int = 0  # blocks[:num_sent_blocks] are in the worker's block table
    sent: bool = False
    outputs: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False


class Driver:
    """Lock-step naive scheduler over a StepStream."""

    def __init__(self, stream: StepStream, block_size: int, num_blocks: int) -> None:
        self.stream, self.block_size = stream, block_size
        self.free_blocks = list(range(num_blocks - 1, -1, -1))
        self.running: list[Seq] = []
        self.to_release: list[int] = []

    def add(self, seq: Seq) -> Seq:
        seq.blocks = list(seq.cached_blocks)
        seq.num_cached_tokens = len(seq.cached_blocks) * self.block_size
        # A fully cached prompt still runs its last token (the worker recomputes it).
        seq.num_computed = min(seq.num_cached_tokens, len(seq.token_ids) - 1)
        self.running.append(seq)
        return seq

    def preempt(self, seq: Seq) -> None:
        """Drops the request's worker state and blocks; it is re-sent with all its tokens."""
        self.to_release.append(seq.request_id)
        self.free_blocks.extend(seq.blocks)
        seq.blocks, seq.num_computed, seq.num_cached_tokens, seq.sent = [], 0, 0, False
        seq.num_sent_blocks = 0

    def finish(self, seq: Seq) -> None:
        seq.done = True
        self.running.remove(seq)
        self.to_release.append(seq.request_id)
        if not seq.keep_blocks:
            self.free_blocks.extend(seq.blocks)

    def plan_fields(self) -> tuple[dict, list[tuple[Seq, int]]]:
        fields = dict(
            new_requests=[],
            run_request_ids=[],
            run_num_tokens=[],
            run_num_new_blocks=[],
            new_block_ids=[],
            release_request_ids=self.to_release,
        )
        self.to_release = []
        entries = []
        for seq in self.running:
            if not seq.sent:
                fields["new_requests"].append(
                    worker_pb2.NewRequest(
                        request_id=seq.request_id,
                        token_ids=seq.token_ids,
                        num_prompt_tokens=seq.num_prompt_tokens,
                        num_cached_tokens=seq.num_cached_tokens,
                        sampling=seq.params,
                    )
                )
                seq.sent = True
            n = min(seq.chunk, len(seq.token_ids) - seq.num_computed)
            needed = -(-(seq.num_computed + n) // self.block_size) - len(seq.blocks)
            seq.blocks += [self.free_blocks.pop() for _ in range(needed)]
            new_blocks = seq.blocks[seq.num_sent_blocks :]  # a cached prefix's blocks included
            seq.num_sent_blocks = len(seq.blocks)
            fields["run_request_ids"].append(seq.request_id)
            fields["run_num_tokens"].append(n)
            fields["run_num_new_blocks"].append(len(new_blocks))
            fields["new_block_ids"].extend(new_blocks)
            entries.append((seq, n))
        return fields, entries

    def step(self) -> worker_pb2.StepResult:
        fields, entries = self.plan_fields()
        result = self.stream.step(**fields)
        assert not result.error, result.error
        assert not result.request_errors, result.request_errors
        assert len(result.token_ids) == len(entries)
        num_logprobs = 0
        for (seq, n), token in zip(entries, result.token_ids, strict=True):
            seq.num_computed += n
            if token < 0:
                assert seq.num_computed < len(seq.token_ids)
                continue
            seq.token_ids.append(token)
            seq.outputs.append(token)
            if seq.params.return_logprobs or seq.params.top_logprobs:
                seq.logprobs.append(result.logprobs[num_logprobs])
                num_logprobs += 1
            if len(seq.outputs) == seq.max_new_tokens:
                self.finish(seq)
        return result

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.running:
                return
            self.step()
        raise AssertionError("requests did not finish")


def start_cpu_worker(model_dir, block_size: int = 4, num_blocks: int = 256, **overrides):
    """An in-process worker on a free port of 127.0.0.1 and a channel to it; stop both with
    stop_worker((worker, channel))."""
    from yaie.worker_service.app import start_worker
    from yaie.worker_service.config import WorkerConfig

    config = WorkerConfig(
        model=str(model_dir),
        host="127.0.0.1",
        port=0,
        device="cpu",
        block_size=block_size,
        num_blocks=num_blocks,
        **overrides,
    )
    worker = start_worker(config)
    return worker, grpc.insecure_channel(f"127.0.0.1:{worker.port}")


def stop_worker(handle) -> None:
    worker, channel = handle
    channel.close()
    worker.stop(grace=None)


def worker_command(model_dir, port: int, *extra: str) -> list[str]:
    """The command line of `python -m yaie.worker_service` serving model_dir on port, for a
    worker (or tensor-parallel group) as a child process; extra: its other flags."""
    return module_command(
        "yaie.worker_service",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *extra,
    )


def load_hf_model(model_dir):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' generate, greedy, never stopping early at an EOS."""
    import torch

    input_ids = torch.tensor([prompt])
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def hf_log_softmax(model, token_ids: list[int]):
    """[len(token_ids), vocab] fp32: log-probabilities of the token after each position."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)
