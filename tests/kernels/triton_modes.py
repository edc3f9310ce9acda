"""Which Triton cases a kernel test process runs: the interpreter cases only in the child pytest
started with TRITON_INTERPRET=1 (tests/conftest.py's interpreter_child), the GPU cases only
where CUDA is present and the interpreter is not."""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="runs in the TRITON_INTERPRET child")
gpu_only = pytest.mark.skipif(
    INTERPRET or not torch.cuda.is_available(), reason="needs CUDA (and no interpreter)"
)
