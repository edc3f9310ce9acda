"""What admission knows of prompts that share a prefix (engine/policy.py): a waiting request's
cached-prefix estimate and when it goes stale, and how many whole blocks two prompts share.

Both run over the prefix scan window (up to 256 waiting requests) at every step, so their cost
matters: re-matching every windowed request in the tree whenever any block entered it took
5-8 ms a step while a shared-prefix wave was admitted (2,176-token prompts; CPU,
bench_scheduler_step.py --at-once; ~17 ms on the H200 host: benchmarks/NOTES.md, session 16).
"""

from __future__ import annotations

from collections.abc import Sequence as Tokens

from yaie.kernels.cache.radix_tree import RadixTree
from yaie.scheduler_service.engine.sequence import Sequence


def first_block_key(seq: Sequence, block_size: int) -> tuple:
    """(namespace, first block of tokens): what the radix tree files a prompt's blocks under,
    so two requests can share cached blocks only if their keys are equal."""
    return (seq.request.namespace, tuple(seq.token_ids[:block_size]))


class HitEpochs:
    """When blocks last entered the tree under each first-block key. A request's match in the
    tree depends only on what is cached under its own key, so its estimate stays exact until
    blocks enter under that key or the tree evicts any (state() then changes)."""

    def __init__(self) -> None:
        self._epochs: dict[tuple, int] = {}
        self._clock = 0

    def entered(self, key: tuple) -> None:
        """Blocks went into the tree under key."""
        self._clock += 1
        self._epochs[key] = self._clock

    def state(self, key: tuple, tree: RadixTree) -> tuple[int, int]:
        return (self._epochs.get(key, 0), tree.num_evicted_blocks)


def common_prefix_tokens(a: Tokens[int], b: Tokens[int], limit: int, block_size: int) -> int:
    """Tokens in the whole blocks a and b share from their start, at most limit (the leading
    block run that is equal; a binary search over slice comparisons, which run in C)."""
    hi = limit // block_size  # blocks that may be equal
    if a[: hi * block_size] == b[: hi * block_size]:
        return hi * block_size
    lo = 0  # the first lo blocks are equal, the first hi are not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo * block_size : mid * block_size] == b[lo * block_size : mid * block_size]:
            lo = mid
        else:
            hi = mid
    return lo * block_size


def worth_waiting(
    seq: Sequence, num_cached: int, sharing: dict[tuple, list[Sequence]], block_size: int
) -> bool:
    """Whether a running request in sharing (by first_block_key) is computing at least two more
    blocks of seq's prompt than the tree holds now (num_cached): seq then waits for them (they
    are shared once computed) instead of computing them again."""
    for other in sharing.get(first_block_key(seq, block_size), ()):
        limit = min(len(seq.token_ids) - 1, other.num_prompt_tokens)
        shared = common_prefix_tokens(seq.token_ids, other.token_ids, limit, block_size)
        if shared - num_cached >= 2 * block_size:
            return True
    return False
