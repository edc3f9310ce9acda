"""`yaie worker --tp 2` as real processes on 127.0.0.1 (gloo): over a real Step stream it gives
the greedy tokens of a one-process worker and of transformers, keeps every rank's request tables
in step (bad plans, several streams), and a rank that dies takes the whole group down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.processes import descendants, free_port, start_serving, stop, wait_gone
from tests.worker_service.driver import (
    Driver,
    Seq,
    StepStream,
    hf_greedy,
    load_hf_model,
    sampling,
    start_cpu_worker,
    stop_worker,
    worker_command,
)
from yaie.worker.v1 import worker_pb2

BLOCK_SIZE, NUM_BLOCKS = 4, 64


def start_group(model_dir: Path) -> tuple[subprocess.Popen, str]:
    """`python -m yaie.worker_service --tp 2` on a free port, SERVING."""
    port = free_port()
    command = worker_command(
        model_dir,
        port,
        "--device",
        "cpu",
        "--tp",
        "2",
        "--log-level",
        "WARNING",
        "--block-size",
        str(BLOCK_SIZE),
        "--num-blocks",
        str(NUM_BLOCKS),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return start_serving(command, f"127.0.0.1:{port}", 120.0, env), f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("LlamaForCausalLM")


@dataclass
class Group:
    process: subprocess.Popen
    rank_1: int
    channel: grpc.Channel


@pytest.fixture(scope="module")
def group(model_dir):
    """A running group (the last test of this file kills its rank 1); a group still running at
    the end must stop cleanly on SIGTERM, every rank with it."""
    process, target = start_group(model_dir)
    ranks = descendants(process.pid)
    assert len(ranks) == 1
    channel = grpc.insecure_channel(target)
    yield Group(process, ranks[0], channel)
    channel.close()
    if process.poll() is None:
        assert stop(process) == 0
    assert wait_gone(ranks, 20.0) == []


def prompt(seed: int, length: int) -> list[int]:
    return [3 + (seed * 131 + i * 71 + i * i * 7) % 697 for i in range(length)]


def run_scenario(channel: grpc.Channel) -> tuple[list[list[int]], list[list[int]]]:
    """(prompts, greedy outputs): ragged prompts, chunked prefill beside decodes, a cached
    prefix, a preemption."""
    stream = StepStream(channel)
    driver = Driver(stream, BLOCK_SIZE, NUM_BLOCKS)
    a = driver.add(Seq(1, prompt(1, 13), 13, 2, keep_blocks=True))
    seqs = [
        driver.add(Seq(2, prompt(2, 5), 5, 16)),
        driver.add(Seq(3, prompt(3, 22), 22, 12, chunk=5)),
    ]
    driver.run()
    cached = a.token_ids[:8] + prompt(4, 6)  # its first two blocks are A's
    seqs.append(driver.add(Seq(4, cached, len(cached), 10, cached_blocks=a.blocks[:2])))
    seqs.append(driver.add(Seq(5, prompt(5, 9), 9, 14)))
    for step in range(6):
        driver.step()
        if step == 3:
            driver.preempt(seqs[-1])
    driver.run()
    stream.close()
    return [s.token_ids[: s.num_prompt_tokens] for s in seqs], [s.outputs for s in seqs]


def test_two_ranks_give_the_tokens_of_one_process_and_of_transformers(group, model_dir) -> None:
    prompts, outputs = run_scenario(group.channel)
    single = start_cpu_worker(model_dir, BLOCK_SIZE, NUM_BLOCKS)
    try:
        assert run_scenario(single[1]) == (prompts, outputs)
    finally:
        stop_worker(single)
    hf = load_hf_model(model_dir)
    for tokens, output in zip(prompts, outputs, strict=True):
        assert output == hf_greedy(hf, tokens, len(output))


def test_a_bad_plan_and_a_new_stream_keep_every_rank_in_step(group) -> None:
    """A plan that fails to decode releases its requests on every rank; a second stream starts
    empty on every rank; both streams then run (the ranks would hang or diverge otherwise)."""
    first, second = StepStream(group.channel, timeout=30), StepStream(group.channel, timeout=30)
    first_driver = Driver(first, BLOCK_SIZE, NUM_BLOCKS)
    seq = first_driver.add(Seq(1, prompt(7, 6), 6, 3))
    first_driver.step()
    bad = first.step(run_request_ids=[1], run_num_tokens=[1], run_num_new_blocks=[1])
    assert "new_block_ids" in bad.error  # request 1 is released everywhere
    retry = first_driver.add(Seq(1, prompt(7, 6), 6, 3))
    first_driver.running.remove(seq)
    second_driver = Driver(second, BLOCK_SIZE, NUM_BLOCKS)
    other = second_driver.add(Seq(1, prompt(7, 6), 6, 3))  # the same id, in another stream
    first_driver.run()
    second_driver.run()
    first.close()
    second.close()
    assert retry.outputs == other.outputs and len(other.outputs) == 3


def test_sampling_that_does_not_decode_fails_its_request_alone_on_every_rank(group) -> None:
    """A NewRequest with top_p 0 for a live id drops that request on both ranks (rank 1 hears
    of it as a release); the new request beside it runs, and so does the next step (the ranks
    would hang or diverge otherwise)."""
    stream = StepStream(group.channel, timeout=30)
    tokens = prompt(9, 6)

    def new(request_id: int, **params: object) -> worker_pb2.NewRequest:
        return worker_pb2.NewRequest(
            request_id=request_id,
            token_ids=tokens,
            num_prompt_tokens=len(tokens),
            sampling=sampling(**params),
        )

    first = stream.step(
        new_requests=[new(1)],
        run_request_ids=[1],
        run_num_tokens=[6],
        run_num_new_blocks=[2],
        new_block_ids=[0, 1],
    )
    assert not first.error and not first.request_errors
    second = stream.step(
        new_requests=[new(1, top_p=0.0), new(2)],
        run_request_ids=[1, 2],
        run_num_tokens=[1, 6],
        run_num_new_blocks=[0, 2],
        new_block_ids=[2, 3],
    )
    assert not second.error and [e.request_id for e in second.request_errors] == [1]
    assert list(second.token_ids) == [-1, first.token_ids[0]]  # the same prompt, greedy
    third = stream.step(run_request_ids=[2], run_num_tokens=[1], run_num_new_blocks=[0])
    assert not third.error and not third.request_errors and third.token_ids[0] >= 0
    stream.close()


def constrained_outputs(channel: grpc.Channel) -> list[list[int]]:
    """Sampled (temperature 1, seeded) outputs of two regex-constrained requests beside an
    unconstrained one, run to their length (the driver ignores a grammar's end)."""
    stream = StepStream(channel)
    driver = Driver(stream, BLOCK_SIZE, NUM_BLOCKS)
    regex = dict(grammar_kind="regex", grammar="[a-e ]+")
    seqs = [
        driver.add(Seq(1, prompt(11, 7), 7, 12, sampling(temperature=1.0, seed=3, **regex))),
        driver.add(Seq(2, prompt(12, 5), 5, 12)),
        driver.add(Seq(3, prompt(13, 9), 9, 12, sampling(temperature=1.0, seed=5, **regex))),
    ]
    driver.run()
    stream.close()
    return [s.outputs for s in seqs]


def test_every_rank_applies_the_same_grammar_mask(group, model_dir) -> None:
    """Constrained rows sample the same tokens on a two-rank group as on one process (each rank
    runs the matcher over the shared tokens: a rank that masked otherwise would diverge or
    hang), and their text stays inside the grammar."""
    from transformers import AutoTokenizer

    outputs = constrained_outputs(group.channel)
    single = start_cpu_worker(model_dir, BLOCK_SIZE, NUM_BLOCKS)
    try:
        assert constrained_outputs(single[1]) == outputs
    finally:
        stop_worker(single)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for output in (outputs[0], outputs[2]):
        text = tokenizer.decode(output, skip_special_tokens=True)
        assert text and set(text) <= set("abcde "), text


def test_rank_0_killed_while_loading_takes_rank_1_down(model_dir) -> None:
    command = worker_command(model_dir, 0, "--device", "cpu", "--tp", "2")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (ranks := descendants(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (rank_1,) = ranks
        time.sleep(1.0)  # rank 1 is importing or joining the group
        process.kill()
        process.wait(10)
        assert wait_gone([rank_1], 20.0) == []
    finally:
        stop(process)


def test_rank_1_killed_takes_rank_0_down_with_a_failure_status(group) -> None:
    """(Last: it ends the module's group.) The scheduler sees the worker lost: exit status 1."""
    os.kill(group.rank_1, signal.SIGKILL)
    assert group.process.wait(20) == 1
