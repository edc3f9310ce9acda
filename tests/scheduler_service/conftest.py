"""Scheduler tests import fake_worker.py (the fake worker and an engine harness) and
served_stack.py from here; the built-in tokenizer is a fixture of every scheduler test folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from yaie.cli.models.random_model import write_tokenizer
from yaie.scheduler_service.api.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))  # `import fake_worker` under --import-mode=importlib


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """The built-in byte-level BPE tokenizer (768 tokens, EOS ids from generation_config)."""
    path: Path = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(path)
    (path / "generation_config.json").write_text('{"eos_token_id": [1, 6]}')
    return Tokenizer(path)
