"""The first hour: `yaie --version`; --help of serve, generate, chat and bench shows the
defaults (sampling flags the server's); `yaie generate` waits for a local server by default and
says what to do when none comes; a bad --model path says it does not exist."""

from __future__ import annotations

import argparse
import re
import subprocess
from importlib.metadata import version

import pytest

from yaie.cli import bench, chat, generate, main, serve
from yaie.worker_service.python_child import module_command


def _help(parser: argparse.ArgumentParser) -> str:
    return re.sub(r"\s+", " ", parser.format_help())  # argparse wraps lines anywhere


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"yaie {version('mini-yaie')}"
    assert "--version" in main.usage() and "chat" in main.usage()


def test_help_shows_the_defaults() -> None:
    text = _help(serve.build_parser())
    for default in (
        "(default: 127.0.0.1)",
        "(default: 50051)",
        "(default: 1)",
        "(default: as many as its memory budget holds)",
        "SmolLM2-135M-Instruct",
        "What is the capital of France?",
    ):
        assert default in text, default
    assert "--log-level {DEBUG,INFO,WARNING,ERROR} how much the processes log" in text
    for parser in (generate.build_parser(), chat.build_parser()):
        text = _help(parser)
        assert "(default: 127.0.0.1:50051)" in text
        assert "--temperature TEMPERATURE server default: 1.0; 0 = greedy" in text
        assert "--top-k TOP_K server default: 0 = off" in text
    text = _help(bench.build_parser())
    for default in ("(default: 256)", "(default: 1024)", "0.0977 = 100/1024"):
        assert default in text, default


def test_generate_waits_for_a_local_target_by_default_only() -> None:
    args = generate.build_parser().parse_args
    assert generate.wait_seconds(args(["hi"])) == generate.LOCAL_WAIT_S
    assert generate.wait_seconds(args(["hi", "--target", "localhost:7"])) == generate.LOCAL_WAIT_S
    assert generate.wait_seconds(args(["hi", "--target", "[::1]:7"])) == generate.LOCAL_WAIT_S
    assert generate.wait_seconds(args(["hi", "--target", "example.org:7"])) == 0
    assert generate.wait_seconds(args(["hi", "--wait", "0"])) == 0


def _yaie(*args: str) -> subprocess.CompletedProcess:
    command = module_command("yaie.cli.main", *args)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )


def test_generate_with_no_server_says_what_to_do(unused_port: int) -> None:
    waited = _yaie("generate", "hi", "--target", f"127.0.0.1:{unused_port}", "--wait", "1")
    assert waited.returncode == 1
    assert "was not SERVING after 1 s" in waited.stderr and "yaie serve" in waited.stderr
    refused = _yaie("generate", "hi", "--target", f"127.0.0.1:{unused_port}", "--wait", "0")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    assert "--wait SECONDS" in refused.stderr


def test_serve_with_a_missing_model_directory_says_so() -> None:
    result = _yaie("serve", "--model", "/nonexistent/model", "--port", "0")
    assert result.returncode == 1
    assert "model directory '/nonexistent/model' does not exist" in result.stderr
    assert "hf download" not in result.stderr


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scheduler_needs_some_source_of_workers(capsys: pytest.CaptureFixture[str]) -> None:
    """No --worker, --internal-port nor --worker-dns: a usage error (2), as is a bad DNS name."""
    from yaie.scheduler_service import __main__ as scheduler

    for argv, message in [
        ([], "give workers: --worker HOST:PORT, --internal-port or --worker-dns"),
        (["--worker-dns", "workers"], "--worker-dns must be NAME:PORT"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            scheduler.main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
