"""The mode itself: a TorchFunctionMode that routes F.linear to the batch-invariant matmul, and
the thread-local flag the attention dispatch reads."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_state = threading.local()


def is_active() -> bool:
    """Whether this thread is inside batch_invariant_mode()."""
    return getattr(_state, "depth", 0) > 0


class _InvariantLinear(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            from yaie.kernels.batch_invariant.matmul import linear_invariant

            return linear_invariant(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def batch_invariant_mode(enabled: bool = True) -> Iterator[None]:
    """Within: batch-invariant linear layers and attention on this thread (a no-op when not
    enabled, so callers can write `with batch_invariant_mode(config.deterministic):`)."""
    if not enabled:
        yield
        return
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        with _InvariantLinear():
            yield
    finally:
        _state.depth -= 1
