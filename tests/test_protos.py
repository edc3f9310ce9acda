"""The committed *_pb2*.py(i) stubs are exactly what `python protos/generate.py` produces."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

PROTO_ROOT = Path(__file__).resolve().parents[1] / "protos"

# Version stamps that a different (compatible) grpcio-tools / protobuf release writes differently;
# everything else in the stubs must match byte for byte.
_VERSION_STAMPS = [
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
    re.compile(r"ValidateProtobufRuntimeVersion\(\n(?:    .*\n){4}", re.M),
]


def _normalized(text: str) -> str:
    for pattern in _VERSION_STAMPS:
        text = pattern.sub("<version>", text)
    return text


def _load_generator():
    path = PROTO_ROOT / "generate.py"
    spec = importlib.util.spec_from_file_location("yaie_protos_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_files(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*_pb2*") if p.suffix in (".py", ".pyi")]
    return {str(p.relative_to(root)): _normalized(p.read_text()) for p in files}


def test_committed_stubs_equal_freshly_generated_ones(tmp_path: Path) -> None:
    """Stale stubs (a .proto edited without `python protos/generate.py`) fail this test."""
    pytest.importorskip("grpc_tools")
    _load_generator().generate(tmp_path)
    fresh = _stub_files(tmp_path)
    committed = _stub_files(PROTO_ROOT)
    assert fresh, "generate.py produced no stubs"
    assert sorted(fresh) == sorted(committed), "stub files missing or extra; run protos/generate.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `python protos/generate.py`"
