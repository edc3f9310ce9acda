"""A batch's sampling parameters in their device form (SamplingBatch), packed from the requests'
SamplingConfigs with two host->device copies and host flags that let sample() skip work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from yaie.kernels.host_copy import to_device
from yaie.kernels.sampling.config import SamplingConfig
from yaie.kernels.sampling.noise import MASK32, row_keys

# top_k of a row without top-k: above any vocabulary, also one padded past the tokenizer's.
TOP_K_OFF = 2**31 - 1


@dataclass
class SamplingBatch:
    """Device tensors of a batch's parameters plus host flags that let sample() skip work.

    Build it with SamplingBatch.build(). When any request uses penalties, the caller sets
    prompt_tokens [B, Lp] and/or output_tokens [B, Lo] (int64 on the logits' device, padded with
    -1); rows that have none use -1 only.
    """

    vocab_size: int
    greedy: torch.Tensor  # [B] bool
    inv_temperature: torch.Tensor  # [B] fp32; 1 for greedy rows
    top_k: torch.Tensor  # [B] int32; TOP_K_OFF where off
    top_p: torch.Tensor  # [B] fp32
    min_p: torch.Tensor  # [B] fp32
    repetition_penalty: torch.Tensor  # [B] fp32
    frequency_penalty: torch.Tensor  # [B] fp32
    presence_penalty: torch.Tensor  # [B] fp32
    row_keys: torch.Tensor  # [B] int64 in [0, 2^32): hash of (seed, position)
    bias_ids: torch.Tensor | None  # [B, Nb] int64, padding 0 with bias 0
    bias_values: torch.Tensor | None  # [B, Nb] fp32
    num_top_logprobs: int
    # Host flags (from the configs, never from tensors): what sample() must do at all.
    all_greedy: bool
    any_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool
    any_penalties: bool
    any_logprobs: bool
    prompt_tokens: torch.Tensor | None = None
    output_tokens: torch.Tensor | None = None

    @property
    def any_filter(self) -> bool:
        """True when some sampled row uses top-k, top-p or min-p."""
        return self.any_top_k or self.any_top_p or self.any_min_p

    def penalty_tokens(self) -> torch.Tensor:
        """[B, L] the tokens the penalties look at: prompt then output tokens, of those set (at
        least one must be), -1 = padding."""
        parts = [t for t in (self.prompt_tokens, self.output_tokens) if t is not None]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @classmethod
    def build(
        cls,
        configs: Sequence[SamplingConfig],
        positions: torch.Tensor | Sequence[int],
        device: torch.device | str,
        vocab_size: int,
    ) -> SamplingBatch:
        """Packs configs into device tensors (one host->device copy each, no sync).

        positions[b] is the sequence index of the token being sampled for request b; together
        with the seed it is the random counter. Raises ValueError on a logit_bias id outside the
        vocabulary.
        """
        if not configs:
            raise ValueError("a sampling batch needs at least one request")
        sampled = [c for c in configs if not c.is_greedy]
        if not sampled and not any(
            c.uses_penalties or c.wants_logprobs or c.logit_bias for c in configs
        ):
            return _plain_greedy_batch(cls, len(configs), device, vocab_size)
        bias_ids, bias_values = _pack_logit_bias(configs, vocab_size, device)
        if isinstance(positions, torch.Tensor):  # on the device already: hash there
            pos = positions.to(device=device, dtype=torch.int64)
            assert pos.shape == (len(configs),), "one position per request"
            seeds = torch.tensor([[c.seed & MASK32, c.seed >> 32] for c in configs])
            seeds = to_device(seeds, device)
            keys = row_keys(seeds[:, 0], seeds[:, 1], pos)
        else:  # hash on the host: B Python ints cost less than ~25 tiny device launches
            positions = list(positions)
            assert len(positions) == len(configs), "one position per request"
            # greedy rows draw no noise: their key is never read
            keys = [
                0 if c.is_greedy else _row_key_host(c.seed, p)
                for c, p in zip(configs, positions, strict=True)
            ]
        # Two host->device copies for all per-row vectors (each copy is a launch and a sync
        # point for pageable memory): floats [6, B], ints [3, B] (or [2, B] with device keys).
        floats = _rows_on_device(
            [
                [1.0 if c.is_greedy else 1.0 / c.temperature for c in configs],
                [c.top_p for c in configs],
                [c.min_p for c in configs],
                [c.repetition_penalty for c in configs],
                [c.frequency_penalty for c in configs],
                [c.presence_penalty for c in configs],
            ],
            torch.float32,
            device,
        )
        int_rows = [
            [c.top_k if 0 < c.top_k < vocab_size else TOP_K_OFF for c in configs],
            [int(c.is_greedy) for c in configs],
        ]
        if not isinstance(keys, torch.Tensor):
            int_rows.append(keys)
        ints = _rows_on_device(int_rows, torch.int64, device)
        return cls(
            vocab_size=vocab_size,
            greedy=ints[1].bool(),
            inv_temperature=floats[0],
            top_k=ints[0].to(torch.int32),
            top_p=floats[1],
            min_p=floats[2],
            repetition_penalty=floats[3],
            frequency_penalty=floats[4],
            presence_penalty=floats[5],
            row_keys=keys if isinstance(keys, torch.Tensor) else ints[2],
            bias_ids=bias_ids,
            bias_values=bias_values,
            num_top_logprobs=max(c.top_logprobs for c in configs),
            all_greedy=not sampled,
            any_greedy=len(sampled) < len(configs),
            any_top_k=any(0 < c.top_k < vocab_size for c in sampled),
            any_top_p=any(c.top_p < 1.0 for c in sampled),
            any_min_p=any(c.min_p > 0.0 for c in sampled),
            any_penalties=any(c.uses_penalties for c in configs),
            any_logprobs=any(c.wants_logprobs for c in configs),
        )


def _rows_on_device(
    rows: list[list], dtype: torch.dtype, device: torch.device | str
) -> list[torch.Tensor]:
    """rows (each of B values) copied in one go; each row starts 16-byte aligned, whatever B
    is: Triton specializes a pointer argument on its alignment, so unaligned rows would compile
    another sampling kernel for some batch sizes (a stalled step while serving)."""
    width = -(-len(rows[0]) // 4) * 4
    padded = [row + [0] * (width - len(row)) for row in rows]
    packed = to_device(torch.tensor(padded, dtype=dtype), device)
    return [packed[i, : len(rows[0])] for i in range(len(rows))]


_PLAIN_GREEDY: dict[tuple[int, str, int], SamplingBatch] = {}


def _plain_greedy_batch(
    cls: type[SamplingBatch], batch_size: int, device: torch.device | str, vocab_size: int
) -> SamplingBatch:
    """A batch of plain greedy rows, its vectors (the neutral values build() would copy for
    them) made once per size, device and vocabulary: sample() only takes its argmax and nothing
    writes a SamplingBatch's vectors, so a decode step copies none. A copy of the cached batch
    (its host fields are the caller's to set)."""
    key = (batch_size, str(torch.device(device)), vocab_size)
    cached = _PLAIN_GREEDY.get(key)
    if cached is None:
        ones, zeros = [1.0] * batch_size, [0.0] * batch_size
        inv_t, top_p, min_p, rep, freq, pres = _rows_on_device(
            [ones, ones, zeros, ones, zeros, zeros], torch.float32, device
        )
        top_k, greedy, keys = _rows_on_device(
            [[TOP_K_OFF] * batch_size, [1] * batch_size, [0] * batch_size], torch.int64, device
        )
        cached = _PLAIN_GREEDY[key] = cls(
            vocab_size=vocab_size,
            greedy=greedy.bool(),
            inv_temperature=inv_t,
            top_k=top_k.to(torch.int32),
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=rep,
            frequency_penalty=freq,
            presence_penalty=pres,
            row_keys=keys,
            bias_ids=None,
            bias_values=None,
            num_top_logprobs=0,
            all_greedy=True,
            any_greedy=True,
            any_top_k=False,
            any_top_p=False,
            any_min_p=False,
            any_penalties=False,
            any_logprobs=False,
        )
    return replace(cached)


def _pack_logit_bias(
    configs: Sequence[SamplingConfig], vocab_size: int, device: torch.device | str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Pads every request's bias map to [B, Nb] (id 0 with bias 0: adding 0 changes nothing)."""
    width = max(len(c.logit_bias) for c in configs)
    if width == 0:
        return None, None
    ids = torch.zeros(len(configs), width, dtype=torch.int64)
    values = torch.zeros(len(configs), width, dtype=torch.float32)
    for b, config in enumerate(configs):
        for i, (token, bias) in enumerate(config.logit_bias.items()):
            if not 0 <= int(token) < vocab_size:
                raise ValueError(f"logit_bias token id {token} outside the vocabulary")
            ids[b, i], values[b, i] = int(token), float(bias)
    return to_device(ids, device), to_device(values, device)


def _row_key_host(seed: int, position: int) -> int:
    """row_keys for one row, on the host."""
    return row_keys(seed & MASK32, seed >> 32, position)
