"""Client side of the public API's security for the CLI tools: the API key (sent as
`authorization: Bearer <key>`), TLS trust roots, and a channel built from both; and how a
client command reports a call that failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc

API_KEY_ENV = "YAIE_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key-file", default=None, help=f"file holding the API key (default: ${API_KEY_ENV})"
    )
    parser.add_argument(
        "--tls-ca", default=None, help="PEM CA to trust: connect with TLS (default: plaintext)"
    )
    parser.add_argument("--tls-cert", default=None, help="client certificate (mTLS)")
    parser.add_argument("--tls-key", default=None, help="client key (mTLS)")


def api_key(key_file: str | None) -> str | None:
    """The key from key_file or $YAIE_API_KEY; None when neither is set. key_file holds a bare
    key, or is a server's tenant file (`TENANT: KEY ...` lines): its first entry's key."""
    if key_file is not None:
        text = Path(key_file).read_text(encoding="utf-8")
        lines = [line.split() for line in text.splitlines() if not line.strip().startswith("#")]
        words = next((line for line in lines if line), [])
        if len(words) >= 2 and words[0].endswith(":"):
            return words[1]
        return words[0] if words else None
    return os.environ.get(API_KEY_ENV) or None


def call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    key = api_key(getattr(args, "api_key_file", None))
    return (("authorization", f"Bearer {key}"),) if key else ()


def channel_credentials(args: object) -> grpc.ChannelCredentials | None:
    """TLS credentials when args has a tls_ca (and a client certificate: mTLS); else None."""
    ca = getattr(args, "tls_ca", None)
    if ca is None:
        return None
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    return grpc.ssl_channel_credentials(
        Path(ca).read_bytes(),
        Path(key).read_bytes() if key else None,
        Path(cert).read_bytes() if cert else None,
    )


def open_channel(target: str, args: argparse.Namespace) -> grpc.Channel:
    """A plaintext channel, or TLS when --tls-ca is given (with a client certificate: mTLS)."""
    credentials = channel_credentials(args)
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


def open_aio_channel(target: str, args: object) -> grpc.aio.Channel:
    """open_channel for asyncio (args None: plaintext)."""
    credentials = channel_credentials(args)
    if credentials is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, credentials)


def report_failure(command: str, target: str, error: Exception) -> int:
    """Prints what went wrong with a client command's call on stderr; returns the exit status.
    Handles grpc.RpcError, TimeoutError (no server became ready) and OSError (a key or CA file
    that cannot be read); anything else is re-raised."""
    if isinstance(error, grpc.RpcError):
        hint = ""
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            hint = f" (is a server running at {target}? --wait SECONDS waits for one)"
        print(f"{command}: {error.code().name}: {error.details()}{hint}", file=sys.stderr)
    elif isinstance(error, TimeoutError):
        print(
            f"{command}: {error}: is a server running there? Start one with `yaie serve`, "
            "or wait longer with --wait SECONDS",
            file=sys.stderr,
        )
    elif isinstance(error, OSError):  # an unreadable key or CA file
        print(f"{command}: {error}", file=sys.stderr)
    else:
        raise error
    return 1
