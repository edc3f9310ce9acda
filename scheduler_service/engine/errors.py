"""Engine errors the API layer maps to gRPC status codes (ValueError -> INVALID_ARGUMENT)."""

from __future__ import annotations


class ResourceExhaustedError(Exception):
    """RESOURCE_EXHAUSTED: the queue is full, or the request could never fit in a KV pool."""


class UnavailableError(Exception):
    """UNAVAILABLE: no healthy worker (none started yet, all failed, or the engine stopped)."""
