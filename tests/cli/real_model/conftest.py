"""The real built-in model (SmolLM2-135M-Instruct), fetched and converted once per test run into
a cache under the run's temporary directory ($YAIE_TEST_CACHE instead, to reuse one across runs),
and transformers' own model of the same folder as the reference."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch

from yaie.cli.models.builtin_model import ensure_builtin_model

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A $YAIE_CACHE holding the converted built-in model."""
    configured = os.environ.get("YAIE_TEST_CACHE")
    root = Path(configured) if configured else tmp_path_factory.mktemp("yaie-cache")
    started = time.monotonic()
    ensure_builtin_model(root)
    logger.warning("built-in model ready in %s after %.1f s", root, time.monotonic() - started)
    return root


@pytest.fixture(scope="session")
def builtin_dir(builtin_cache: Path) -> Path:
    return ensure_builtin_model(builtin_cache)  # checked, not rebuilt


@pytest.fixture(scope="session")
def hf_model(builtin_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(builtin_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def hf_tokenizer(builtin_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_dir)
