"""Rooflines of serving workloads (bench_stack.py): the fastest any engine could run them on a
device with the measured copy bandwidth and matmul rate.

Decode step with B running requests of contexts c_1..c_B (tokens already in the KV cache):
    bytes = W + kv_per_token * sum(c_j)   (weights read once per step; each request's KV read once)
    time  = bytes / copy_bandwidth        (copy bandwidth counts bytes read + written, the fairer
                                           yardstick for a kernel that mostly reads)
Prefill of P uncached prompt tokens at context offset o: flops = 2 * N_matmul * P +
4 * layers * q_heads * head_dim * (attended keys), time = flops / matmul rate.
The simulation admits requests in arrival order up to max_running at once (the scheduler's cap);
each admitted request runs its prefill (which yields its first token), then one token per decode
step until its output length is reached. Total time = prefill time + sum of step times; roofline
tok/s = output tokens / total time. Left out (each makes the real floor higher): logits
(B x vocab x 4 B written and read by the sampler), activations, the KV write of new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the roofline needs of a model (counted from its config)."""

    num_layers: int
    hidden: int
    intermediate: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    dtype_bytes: int = 2

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in a token's matmuls (layers + lm_head; no embedding)."""
        q, kv = self.num_q_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = self.hidden * (q + 2 * kv) + q * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return self.num_layers * (attn + mlp) + self.vocab * self.hidden

    @property
    def weight_bytes(self) -> int:
        """Bytes a decode step reads: every matmul weight once (a tied embedding is the lm_head;
        an untied embedding table is only gathered, B rows, ignored) + norms."""
        norms = self.num_layers * 2 * self.hidden + self.hidden
        return (self.matmul_params + norms) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def prefill_flops(self, new_tokens: int, offset: int) -> float:
        """Matmuls + causal attention (QK^T and PV) of new_tokens after offset cached ones."""
        keys = new_tokens * offset + new_tokens * (new_tokens + 1) / 2
        attention = 4 * self.num_layers * self.num_q_heads * self.head_dim * keys
        return 2 * self.matmul_params * new_tokens + attention


@dataclass(frozen=True)
class Roofline:
    output_tokens: int
    prefill_s: float
    decode_s: float
    decode_steps: int

    @property
    def seconds(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds


def simulate(
    shape: ModelShape,
    requests: list[tuple[int, int, int]],
    copy_bytes_s: float,
    matmul_flop_s: float,
    max_running: int = 256,
    kv_capacity_tokens: float = float("inf"),
) -> Roofline:
    """requests: (prompt tokens, cached prompt tokens, output tokens), in arrival order.
    A request is admitted only while the KV it will hold at its end (prompt - cached + output:
    cached blocks are shared) fits kv_capacity_tokens next to the running ones' (no preemption)."""
    waiting = list(reversed(requests))
    running: list[list[int]] = []  # [context, tokens still to decode, KV tokens reserved]
    total_ctx = prefill_s = decode_s = reserved = 0.0
    steps = 0
    while waiting or running:
        while waiting and len(running) < max_running:
            prompt, cached, output = waiting[-1]
            need = prompt - cached + output
            if running and reserved + need > kv_capacity_tokens:
                break
            waiting.pop()
            prefill_s += shape.prefill_flops(prompt - cached, cached) / matmul_flop_s
            if output > 1:  # prefill produced the first token
                running.append([prompt + 1, output - 1, need])
                total_ctx += prompt + 1
                reserved += need
        if not running:
            continue
        # one decode step: every running request reads its KV (context) and writes one token
        decode_s += (shape.weight_bytes + shape.kv_bytes_per_token * total_ctx) / copy_bytes_s
        steps += 1
        still = []
        for entry in running:
            entry[0] += 1
            entry[1] -= 1
            total_ctx += 1
            if entry[1] > 0:
                still.append(entry)
            else:
                total_ctx -= entry[0]
                reserved -= entry[2]
        running = still
    return Roofline(sum(r[2] for r in requests), prefill_s, decode_s, steps)


def step_floor_s(shape: ModelShape, contexts: list[int], copy_bytes_s: float) -> float:
    """One decode step's floor for the given contexts (light load: B ~ 1)."""
    return (shape.weight_bytes + shape.kv_bytes_per_token * sum(contexts)) / copy_bytes_s
