"""Real `yaie serve` stacks on tiny random models: one model folder per architecture, and one
Llama stack shared by the tests that need any running server (tests/cli/conftest.py starts and
stops them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from yaie.cli.models.random_model import write_random_model

ARCHITECTURES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: write_random_model(root / arch, arch, seed=1) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def llama_stack(model_dirs: dict[str, Path], tools: SimpleNamespace) -> Iterator:
    """One stack shared by the tests that need any running server.

    Its KV pool (96 blocks of 16 tokens) is smaller than the context (2048 tokens)."""
    with tools.running_stack(model_dirs["LlamaForCausalLM"], "--num-blocks", "96") as stack:
        yield stack
