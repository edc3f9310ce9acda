"""Counter-based random numbers shared by every sampler here: a uniform for each (seed, position,
token id), so a request's draws never depend on what else is in its batch (the Triton kernels
compute the same hash: triton_search.gumbel)."""

from __future__ import annotations

from typing import TypeVar

import torch

MASK32 = 0xFFFFFFFF
# Multipliers of the "lowbias32" integer mixer; both < 2^31, so x * C < 2^63 for any x < 2^32
# and the int64 products in torch never overflow.
_MIX_C1 = 0x21F0AAAD
_MIX_C2 = 0x735A2D97
_Int = TypeVar("_Int", torch.Tensor, int)  # the hash runs on device tensors and host ints alike


def mix32(x: _Int) -> _Int:
    """The lowbias32 integer hash on values in [0, 2^32): int64 tensors, or one Python int (the
    same arithmetic, for hashing on the host)."""
    x = x ^ (x >> 16)
    x = (x * _MIX_C1) & MASK32
    x = x ^ (x >> 15)
    x = (x * _MIX_C2) & MASK32
    return x ^ (x >> 15)


def row_keys(seeds_lo: _Int, seeds_hi: _Int, positions: _Int) -> _Int:
    """[B] int64 keys in [0, 2^32) from the two halves of each 64-bit seed and the position
    (tensors; or Python ints for one row)."""
    h = mix32(seeds_lo)
    h = mix32(h ^ seeds_hi)
    return mix32(h ^ (positions & MASK32))


def uniforms(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """fp32 uniforms in (0, 1) for keys [B] and token ids [B, N] (or [N]): one per pair.

    23 random bits, centred: u = (bits + 0.5) / 2^23 (exact in fp32, so never 0 or 1) and
    log(-log(u)) is finite.
    """
    bits = mix32(mix32(token_ids.to(torch.int64)) ^ keys.unsqueeze(-1)) >> 9
    return (bits.to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def gumbel_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """-log(-log(u)): Gumbel(0, 1) noise; argmax(log p + noise) draws from p (Gumbel-max)."""
    return -torch.log(-torch.log(uniforms(keys, token_ids)))
