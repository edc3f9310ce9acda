"""`yaie bench --backend openai` drives the HTTP API of a real stack and reports what the gRPC
backend reports for the same workload: exact token counts, TTFT and ITLs, the JSON record."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from yaie.cli import bench, client_security
from yaie.cli.health_probe import wait_for_serving
from yaie.cli.models.random_model import write_random_model
from yaie.worker_service.python_child import module_command

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    model = write_random_model(tmp_path_factory.mktemp("bench-http") / "llama", seed=2)
    port, http_port = _free_port(), _free_port()
    command = module_command("yaie.cli.main", "serve", "--model", str(model))
    command += ["--port", str(port), "--http-port", str(http_port), "--device", "cpu"]
    command += ["--num-blocks", "128", "--log-level", "WARNING"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(client_security.API_KEY_ENV, None)
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        wait_for_serving(f"127.0.0.1:{port}", 180.0)
        yield SimpleNamespace(grpc=f"127.0.0.1:{port}", http=f"http://127.0.0.1:{http_port}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_both_backends_report_the_same_counts(stack):
    fixed = dict(dataset="fixed", num_prompts=4, fixed_input_len=16, fixed_output_len=8)
    over_grpc, _ = bench.run_workload(stack.grpc, bench.BenchConfig(**fixed, disable_progress=True))
    config = bench.BenchConfig(**fixed, disable_progress=True, backend="openai")
    over_http, info = bench.run_workload(stack.http, config)
    assert info.vocab_size == 768 and info.model.endswith("llama")
    for m in (over_grpc, over_http):
        assert (m.completed, m.failed) == (4, 0)
        assert (m.total_input_tokens, m.total_output_tokens) == (4 * 16, 4 * 8)
        assert m.mean_ttft_ms > 0 and m.mean_itl_ms > 0 and m.output_throughput > 0
    assert over_http.num_frames == over_grpc.num_frames == 4 * 8  # one chunk per frame


def test_cli_backend_openai_writes_its_record(stack, tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    argv = ["--backend", "openai", "--target", stack.http, "--dataset", "fixed"]
    argv += ["--num-prompts", "2", "--fixed-input-len", "8", "--fixed-output-len", "4"]
    assert bench.main([*argv, "--disable-progress", "--output-file", str(out)]) == 0
    assert "Output token throughput" in capsys.readouterr().out
    run = json.loads(out.read_text())
    assert run["backend"] == "openai" and run["completed"] == 2 and run["target"] == stack.http


def test_openai_backend_reports_http_errors(stack):
    config = bench.BenchConfig(
        dataset="fixed", num_prompts=1, fixed_input_len=4000, disable_progress=True
    )
    config = bench.BenchConfig(**{**config.__dict__, "backend": "openai"})
    m, _ = bench.run_workload(stack.http, config)
    assert m.failed == 1 and m.errors[0].startswith("HTTP 400")
