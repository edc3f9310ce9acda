"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

# pytest in a child, without the current directory on sys.path (see the interpreter fixture)
_PYTEST_WITHOUT_CWD = (
    "import sys; sys.path.pop(0); import pytest; sys.exit(pytest.main(sys.argv[1:]))"
)
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def interpreter_child() -> Callable[..., None]:
    """Runs a test file's interpreter cases in a child pytest with TRITON_INTERPRET=1.

    Triton picks interpreted or compiled kernels when a kernel module is imported, so the
    variable cannot be set inside the parent run without leaking into other files (and into the
    GPU tests). The child must pass at least `expected` tests, so a broken selection fails too.
    """

    def run(test_file: str, expected: int, select: str | None = None) -> None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            pytest.skip("this is the child")
        pytest.importorskip("triton")
        # Not `python -m pytest`: that puts the checkout first on sys.path, where our kernels/
        # folder shadows Hugging Face's `kernels` package, which transformers (>= 5.25) imports.
        cmd = [sys.executable, "-c", _PYTEST_WITHOUT_CWD, test_file, "-q", "-p", "no:cacheprovider"]
        cmd += ["-W", "ignore::RuntimeWarning"] + (["-k", select] if select else [])
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
        )
        report = proc.stdout + proc.stderr
        assert proc.returncode == 0, report
        passed = re.search(r"(\d+) passed", report)
        assert passed and int(passed.group(1)) >= expected, report

    return run
