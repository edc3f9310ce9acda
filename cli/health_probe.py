"""grpc.health.v1 probe: `python -m yaie.cli.health_probe HOST:PORT` exits 0 when SERVING.

Docker health checks run it; `yaie generate --wait` and the tests use wait_for_serving.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yaie.cli import client_security

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(target: str, service: str = "", timeout_s: float = 2.0) -> str:
    """The status name (SERVING, NOT_SERVING, ...); raises grpc.RpcError when unreachable."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_for_serving(
    target: str,
    timeout_s: float,
    service: str = "",
    security: argparse.Namespace | None = None,
) -> None:
    """Polls until the target says SERVING; raises TimeoutError with the last status seen.
    security: client_security flags for the channel (default: plaintext)."""
    deadline = time.monotonic() + timeout_s
    with client_security.open_channel(target, security or argparse.Namespace()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                if reply.status == SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                last = error.code().name
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} was not SERVING after {timeout_s:.0f} s ({last})")
            time.sleep(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yaie.cli.health_probe", description=__doc__)
    parser.add_argument("target", help="HOST:PORT of a scheduler or a worker")
    parser.add_argument("--service", default="", help="service name (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        status = check(args.target, args.service, args.timeout)
    except grpc.RpcError as error:
        status = error.code().name
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
