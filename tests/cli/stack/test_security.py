"""`yaie serve` with an API key, metrics and JSON logs: `yaie generate` needs the key (from
$YAIE_API_KEY or --api-key-file); the local workers refuse calls without the run's internal
secret; the metrics endpoint serves the named series. And no service puts pickle on the wire."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from yaie.v1 import generation_pb2 as pb
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc

KEY = "sk-stack-test-123"
ROOT = Path(__file__).resolve().parents[3]


def _generate(tools, target: str, *args: str, key: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "YAIE_API_KEY"}
    if key is not None:
        env["YAIE_API_KEY"] = key
    generate = ("generate", "Hello", "--target", target, "--max-new-tokens", "4", "--ignore-eos")
    return tools.run_yaie(*generate, *args, env=env)


def _bench(tools, target: str, *args: str):
    """`yaie bench`, two fixed 8-token prompts x 2 tokens, no key in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "YAIE_API_KEY"}
    return tools.run_yaie(
        "bench",
        "--target",
        target,
        "--dataset",
        "fixed",
        "--num-prompts",
        "2",
        "--fixed-input-len",
        "8",
        "--fixed-output-len",
        "2",
        "--disable-progress",
        *args,
        env=env,
    )


def test_serve_with_api_key_secret_and_metrics(model_dirs, tools, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    metrics_port = tools.free_port()
    extra = (
        "--api-key-file",
        str(key_file),
        "--metrics-port",
        str(metrics_port),
        "--log-format",
        "json",
    )
    with tools.running_stack(model_dirs["LlamaForCausalLM"], *extra) as stack:
        refused = _generate(tools, stack.target)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        assert _generate(tools, stack.target, key=KEY).returncode == 0
        by_file = _generate(tools, stack.target, "--api-key-file", str(key_file))
        assert by_file.returncode == 0, by_file.stderr
        with grpc.insecure_channel(stack.target) as channel:
            with pytest.raises(grpc.RpcError) as error:
                stack.stub(channel).GetServerStats(
                    pb.GetServerStatsRequest(), metadata=(("authorization", "Bearer x"),)
                )
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            metadata = (("authorization", f"Bearer {KEY}"),)
            stats = stack.stub(channel).GetServerStats(
                pb.GetServerStatsRequest(), metadata=metadata, timeout=10
            )
        with grpc.insecure_channel(stats.workers[0].address) as channel:
            worker = worker_pb2_grpc.WorkerStub(channel)
            with pytest.raises(grpc.RpcError) as error:  # the run's secret is not ours
                worker.Describe(worker_pb2.DescribeRequest(), timeout=10)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        benched = _bench(tools, stack.target, "--api-key-file", str(key_file))
        assert benched.returncode == 0, benched.stderr
        refused = _bench(tools, stack.target)
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert 'yaie_requests_total{outcome="length"} 2.0' in text
    for series in (
        "yaie_completion_tokens_total 8.0",
        "yaie_time_to_first_token_seconds_count",
        "yaie_inter_token_latency_seconds_bucket",
        "yaie_kv_blocks{",
        "yaie_queue_waiting",
        "yaie_cache_hit_rate{",
        "yaie_worker_healthy{",
    ):
        assert series in text, series


def test_no_service_imports_pickle() -> None:
    """The wire carries protobuf only: no pickle (or its relatives) in the services or the CLI."""
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|marshal|shelve)\b", re.M)
    sources = [
        p
        for d in ("scheduler_service", "worker_service", "kernels", "cli")
        for p in (ROOT / d).rglob("*.py")
    ]
    assert len(sources) > 20
    offenders = [str(p) for p in sources if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_serve_with_public_mtls_gets_ready_and_serves_only_clients_with_a_certificate(
    model_dirs, tools, tmp_path
) -> None:
    """Under --tls-ca (clients must present a certificate from that CA) `yaie serve` still
    finds its scheduler SERVING (in-process, no probe over the public port) and serves a client
    with a certificate; one without is refused; --demo (no client certificate) is refused at
    start with a clear message."""
    pytest.importorskip("cryptography")
    from tests.pki import make_pki

    pki = make_pki()
    pem = {
        "ca": pki.ca,
        "cert": pki.server_cert,
        "key": pki.server_key,
        "client_cert": pki.client_cert,
        "client_key": pki.client_key,
    }
    for name, data in pem.items():
        (tmp_path / name).write_bytes(data)
    files = {name: str(tmp_path / name) for name in pem}
    tls = ("--tls-cert", files["cert"], "--tls-key", files["key"], "--tls-ca", files["ca"])
    demo = tools.run_yaie("serve", "--demo", "Hi", *tls)
    assert demo.returncode == 2 and "--demo has no client certificate" in demo.stderr
    port = tools.free_port()
    command = tools.serve_command(
        model_dirs["LlamaForCausalLM"], port, 128, "--log-level", "INFO", *tls
    )
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    ready = f"SERVING on 127.0.0.1:{port}"  # the stack's line (a worker logs its own port)
    try:
        deadline = time.monotonic() + 180
        while ready not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        assert ready in log.read_text()
        target = f"localhost:{port}"
        client_tls = (
            "--tls-ca",
            files["ca"],
            "--tls-cert",
            files["client_cert"],
            "--tls-key",
            files["client_key"],
        )
        # --wait probes the health service over the same TLS channel as the call
        ok = _generate(tools, target, *client_tls, "--wait", "30")
        assert ok.returncode == 0, ok.stderr
        refused = _generate(tools, target, "--tls-ca", files["ca"])
        assert refused.returncode != 0
        benched = _bench(tools, target, *client_tls)
        assert benched.returncode == 0, benched.stderr
        assert "Successful requests" in benched.stdout
        assert _bench(tools, target, "--tls-ca", files["ca"]).returncode == 1
    finally:
        tools.stop(process)
