"""`yaie worker --deterministic` (and `yaie serve --deterministic`, which passes it on) turns on
the batch-invariant mode; it refuses the combinations that would break it."""

from __future__ import annotations

import pytest

from yaie.cli import serve
from yaie.worker_service.__main__ import build_parser, config_from_args
from yaie.worker_service.config import WorkerConfig


def test_worker_flag_sets_the_config() -> None:
    args = build_parser().parse_args(["--model", "m", "--deterministic"])
    assert config_from_args(args).deterministic
    assert not config_from_args(build_parser().parse_args(["--model", "m"])).deterministic


@pytest.mark.parametrize("extra", [{"cascade_attention": True}, {"tp": 2}])
def test_refused_combinations(extra: dict) -> None:
    with pytest.raises(ValueError, match="deterministic"):
        WorkerConfig(model="m", deterministic=True, **extra)


def test_serve_passes_the_flag_to_its_workers(monkeypatch) -> None:
    seen: list[list[str]] = []

    class Recorder:
        def __init__(self, command, **kwargs) -> None:
            seen.append(command)

    monkeypatch.setattr(serve.subprocess, "Popen", Recorder)
    args = serve.build_parser().parse_args(["--deterministic"])
    serve.spawn_worker(args, "m", 5000, None)
    assert "--deterministic" in seen[0]
    serve.spawn_worker(serve.build_parser().parse_args([]), "m", 5000, None)
    assert "--deterministic" not in seen[1]
