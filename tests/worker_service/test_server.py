"""The worker's gRPC surface: Describe, health, bad plans answered with errors on a stream that
keeps working, plans sent ahead of their results, stream close and release dropping state, and
the command line (SIGTERM exits 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.processes import free_port
from tests.worker_service.driver import (
    StepStream,
    hf_greedy,
    load_hf_model,
    sampling,
    start_cpu_worker,
    stop_worker,
    worker_command,
)
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc
from yaie.worker_service.__main__ import main as worker_main

BLOCK_SIZE, NUM_BLOCKS = 4, 64
PROMPT = [11, 42, 7, 300, 12, 99]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("LlamaForCausalLM")


@pytest.fixture(scope="module")
def channel(model_dir):
    handle = start_cpu_worker(model_dir, BLOCK_SIZE, NUM_BLOCKS)
    yield handle[1]
    stop_worker(handle)


@pytest.fixture(scope="module")
def reference(model_dir) -> list[int]:
    """transformers' greedy continuation of PROMPT."""
    return hf_greedy(load_hf_model(model_dir), PROMPT, 16)


def new_request(request_id: int, token_ids=PROMPT, num_cached: int = 0, **params):
    return worker_pb2.NewRequest(
        request_id=request_id,
        token_ids=token_ids,
        num_prompt_tokens=len(token_ids),
        num_cached_tokens=num_cached,
        sampling=sampling(**params),
    )


def run(ids, tokens, blocks_per_entry=None, block_ids=()) -> dict:
    """Plan fields for run entries."""
    blocks_per_entry = blocks_per_entry or [0] * len(ids)
    return dict(
        run_request_ids=ids,
        run_num_tokens=tokens,
        run_num_new_blocks=blocks_per_entry,
        new_block_ids=list(block_ids),
    )


def test_describe_reports_model_pool_and_protocol(channel, model_dir):
    info = worker_pb2_grpc.WorkerStub(channel).Describe(worker_pb2.DescribeRequest())
    assert info.protocol_version == worker_pb2.PROTOCOL_VERSION_CURRENT
    assert info.model == str(model_dir) and info.architecture == "LlamaForCausalLM"
    assert (info.dtype, info.device, info.attention_backend) == ("float32", "cpu", "sdpa")
    assert info.kv_cache_dtype == "float32"  # auto: the model's
    assert (info.block_size, info.num_blocks) == (BLOCK_SIZE, NUM_BLOCKS)
    assert info.vocab_size % 64 == 0 and info.vocab_size > 0
    assert info.max_context == 2048 and info.random_weights


def test_health_is_serving_once_loaded(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "yaie.worker.v1.Worker"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_bad_plans_get_errors_and_the_stream_keeps_working(channel, reference):
    """Each bad entry fails only its request; request 1 runs beside them to the right tokens."""
    stream = StepStream(channel)
    result = stream.step(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    tokens = [result.token_ids[0]]
    bad_entries = [  # (new requests, tokens and blocks of request 2's entry, expected error)
        ([], 6, [2, 3], "unknown request"),
        ([new_request(2), new_request(2)], 6, [2, 3], "already live"),
        ([new_request(2)], 6, [2, NUM_BLOCKS], "outside [0, 64)"),
        ([new_request(2)], 7, [2, 3], "past the known tokens"),
        ([new_request(2)], 6, [2], "block table holds 4 tokens"),
        ([new_request(2, num_cached=3)], 3, [2], "multiple of block_size"),
        ([new_request(2, num_cached=8)], 1, [2, 3], "at most the 6 tokens"),
        ([new_request(2, token_ids=[1] * 2049)], 1, [2], "max context"),
        ([new_request(2, token_ids=[10**6])], 1, [2], "outside the vocabulary"),
        ([new_request(2, top_p=0.0)], 6, [2, 3], "top_p"),
        ([new_request(2, logit_bias={10**6: 1.0})], 6, [2, 3], "outside the vocabulary"),
        ([new_request(2, logit_bias={5: float("nan")})], 6, [2, 3], "NaN"),
        ([new_request(2, top_logprobs=10**6)], 6, [2, 3], "top_logprobs"),
        ([new_request(2)], 6, [2] * 600, "exceeds what max context"),
    ]
    for i, (new, num_tokens, blocks, message) in enumerate(bad_entries):
        owned = [4 + i] if len(tokens) % BLOCK_SIZE == 3 else []  # request 1's next block
        result = stream.step(
            new_requests=new,
            release_request_ids=[2],
            **run([2, 1], [num_tokens, 1], [len(blocks), len(owned)], blocks + owned),
        )
        assert not result.error
        assert [e.request_id for e in result.request_errors] == [2]
        assert message in result.request_errors[0].message
        assert result.token_ids[0] == -1
        tokens.append(result.token_ids[1])
    assert tokens == reference[: len(tokens)]
    # A decode of request 1 asking for 2 tokens fails it, and only it.
    result = stream.step(**run([1], [2]))
    assert [e.request_id for e in result.request_errors] == [1]
    stream.close()


def test_sampling_that_does_not_decode_fails_only_its_request(channel, reference):
    """top_p 0 on the wire (SamplingConfig refuses it at the edge): request 2 fails, request 1
    of the same step runs, and the stream goes on."""
    stream = StepStream(channel)
    result = stream.step(
        new_requests=[new_request(2, top_p=0.0), new_request(1)],
        **run([2, 1], [6, 6], [2, 2], [2, 3, 0, 1]),
    )
    assert not result.error
    assert [e.request_id for e in result.request_errors] == [2]
    assert "top_p" in result.request_errors[0].message
    assert list(result.token_ids) == [-1, reference[0]]
    result = stream.step(**run([1], [1]))
    assert not result.error and not result.request_errors
    assert list(result.token_ids) == reference[1:2]
    stream.close()


def test_inconsistent_plans_fail_the_step_and_the_stream_keeps_working(channel, reference):
    stream = StepStream(channel)
    fields = run([1], [6], [2], [0, 1])
    fields["run_num_tokens"] = [6, 1]
    result = stream.step(new_requests=[new_request(1)], **fields)
    assert "differ in length" in result.error and list(result.token_ids) == [-1]
    result = stream.step(new_requests=[new_request(1)], **run([1], [6], [2], [0]))
    assert "new_block_ids" in result.error
    last = stream.next_step_id - 1
    stream.send(step_id=1, new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    assert "not increasing" in stream.recv().error
    # A rejected lower id does not lower the bar: the id between it and the last is refused too.
    stream.send(step_id=last, new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    assert "not increasing" in stream.recv().error
    # The failed steps dropped request 1: it can be sent again and runs correctly.
    result = stream.step(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    assert not result.error and not result.request_errors
    assert result.token_ids[0] == reference[0]
    stream.close()


def test_plans_sent_ahead_of_their_results_decode_the_right_tokens(channel, reference):
    """Overlap: plans N+1.. go out before result N is read; decodes use device-held tokens."""
    stream = StepStream(channel)
    stream.send(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    for i in range(11):
        num_tokens = len(PROMPT) + 1 + i  # after this decode
        new = [2 + (num_tokens - 1) // BLOCK_SIZE] if (num_tokens - 1) % BLOCK_SIZE == 0 else []
        stream.send(**run([1], [1], [len(new)], new))
    results = [stream.recv() for _ in range(12)]
    assert [r.step_id for r in results] == list(range(1, 13))
    assert [r.token_ids[0] for r in results] == reference[:12]
    stream.close()


def test_released_and_closed_stream_requests_are_dropped(channel):
    stream = StepStream(channel)
    stream.step(
        new_requests=[new_request(1), new_request(2)], **run([1, 2], [6, 6], [2, 2], [0, 1, 2, 3])
    )
    result = stream.step(release_request_ids=[2], **run([1, 2], [1, 1]))
    assert [e.request_id for e in result.request_errors] == [2]
    assert result.token_ids[0] >= 0 and result.token_ids[1] == -1
    stream.close()
    other = StepStream(channel)
    result = other.step(**run([1], [1]))
    assert [e.message for e in result.request_errors] == ["unknown request 1"]
    other.close()


def test_a_second_scheduler_is_refused_while_the_first_has_streams_open(channel):
    """Two schedulers' allocators would hand out the same blocks: while scheduler A has a step
    stream open, B's stream is refused (FAILED_PRECONDITION) and A's keeps working; A may open
    more; once A's are all closed, B takes the worker over."""
    first = StepStream(channel, scheduler_id="scheduler-a")
    first.step(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    second = StepStream(channel, scheduler_id="scheduler-b")
    with pytest.raises(grpc.RpcError) as refused:
        second.step(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "another scheduler" in refused.value.details()
    assert first.step(**run([1], [1])).token_ids[0] >= 0  # A's request is untouched
    again = StepStream(channel, scheduler_id="scheduler-a")  # a reconnecting A is not refused
    again.step(**run([], []))
    again.close()
    first.close()
    takeover = StepStream(channel, scheduler_id="scheduler-b")
    result = takeover.step(new_requests=[new_request(1)], **run([1], [6], [2], [0, 1]))
    assert result.token_ids[0] >= 0 and not result.request_errors
    takeover.close()


def _start_command_line_worker(command: list[str]) -> subprocess.Popen:
    """command with the test's CPU pool of 32 blocks; stderr piped, unbuffered."""
    return subprocess.Popen(
        [*command, "--device", "cpu", "--num-blocks", "32"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_command_line_worker_serves_and_exits_0_on_sigterm(model_dir):
    port = free_port()
    process = _start_command_line_worker(worker_command(model_dir, port))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "worker never became SERVING"
                time.sleep(0.2)
            info = worker_pb2_grpc.WorkerStub(channel).Describe(worker_pb2.DescribeRequest())
            assert info.num_blocks == 32
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert b"stopping (SIGTERM)" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_command_line_rejects_bad_arguments_and_a_missing_model():
    """Usage errors exit 2 (argparse); a model that cannot load exits 1, with no server left."""
    with pytest.raises(SystemExit) as exit_info:
        worker_main(["--model", "m", "--dtype", "float64"])
    assert exit_info.value.code == 2
    assert worker_main(["--model", "m", "--block-size", "0", "--device", "cpu"]) == 2
    assert worker_main(["--model", "/nonexistent/model", "--port", "0", "--device", "cpu"]) == 1


def test_command_line_worker_leaves_at_once_on_sigterm_while_loading(model_dir):
    """SIGTERM while the model loads (here a load held up for a minute, as a big model's is)
    ends the worker at once with 128 + SIGTERM instead of after the load."""
    slow_load = (
        "import sys, time; sys.path.pop(0); import yaie.worker_service.loader as loader; "
        "real = loader.load_model; "
        "loader.load_model = lambda *a, **k: (time.sleep(60), real(*a, **k))[1]; "
        "from yaie.worker_service.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    command = worker_command(model_dir, free_port())
    module = command.index("yaie.worker_service")  # the same flags, the worker run by slow_load
    command[1 : module + 1] = ["-c", slow_load]
    process = _start_command_line_worker(command)
    try:
        deadline = time.monotonic() + 60
        while b"loading" not in process.stderr.peek() and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)  # into the held-up load
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        assert b"while loading the model" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
