"""Regenerates the Python stubs beside each .proto (run from anywhere: `python protos/generate.py`).

tests/test_protos.py fails when the committed stubs differ from what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = [
    "yaie/v1/generation.proto",
    "yaie/worker/v1/worker.proto",
    "yaie/worker/v1/registry.proto",
]


def generate(out_dir: Path) -> None:
    """Runs grpcio-tools' protoc on every proto file, writing *_pb2.py, *_pb2.pyi, *_pb2_grpc.py."""
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
