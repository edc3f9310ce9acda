"""The Llama-family decoder on the paged KV pool: Llama 2/3.x, Qwen2, Qwen3 and Mistral differ
only in flags of ModelConfig (q/k/v bias, q/k norm, rope scaling, tied embeddings). With a
TPGroup, each rank holds its share of the heads, MLP columns and vocabulary (models/parallel.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from yaie.kernels.attention import store_kv
from yaie.kernels.elementwise import apply_rotary
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.models.base import CausalLM, describe_names
from yaie.worker_service.models.config import ModelConfig
from yaie.worker_service.models.cpu_linear import PackedLinear, pack_linears
from yaie.worker_service.models.layers import (
    GatedMLP,
    RMSNorm,
    RopeInputs,
    RotaryEmbedding,
    use_triton,
)
from yaie.worker_service.models.paged_attention import paged_attention
from yaie.worker_service.models.parallel import (
    Linear,
    RowParallelLinear,
    vocab_parallel_logits,
    vocab_range,
    weight_slice,
)

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

# Checkpoint projections stored inside one fused parameter: HF name -> (fused name, shard index).
_FUSED_SHARDS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
_SHARD_NAMES = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}
_FUSED_NAME = re.compile(r"^(.*)\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.(weight|bias)$")


class Attention(nn.Module):
    """With tp, this rank's heads only: num_heads / tp.size query heads over num_kv_heads / tp.size
    KV heads (column-parallel q/k/v), then a row-parallel o_proj."""

    def __init__(
        self, cfg: ModelConfig, dtype: torch.dtype, backend: str, tp: TPGroup | None = None
    ) -> None:
        super().__init__()
        tp_size = tp.size if tp is not None else 1
        self.num_heads, self.num_kv_heads = cfg.num_heads // tp_size, cfg.num_kv_heads // tp_size
        self.head_dim, self.eps = cfg.head_dim, cfg.rms_norm_eps
        self.q_size, self.kv_size = self.num_heads * cfg.head_dim, self.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.backend = backend
        self.qkv_proj = Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.qkv_bias, dtype, backend
        )
        self.o_proj = RowParallelLinear(
            self.q_size, cfg.hidden_size, cfg.o_bias, dtype, tp, backend
        )
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, backend)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, dtype, backend)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """(offset, size) of q, k, v in qkv_proj's output rows."""
        q, kv = self.q_size, self.kv_size
        return [(0, q), (q, kv), (q + kv, kv)]

    def _qkv(self, x: torch.Tensor, rope: RopeInputs, pool: tuple) -> tuple[torch.Tensor, ...]:
        """q [T, heads, D], k and v [T, kv_heads, D], q and k normed (Qwen3) and rotated, and k
        and v written into the paged pool: pool = (k_cache, v_cache, slots, k_scale, v_scale),
        store_kv's arguments. The fused Triton path does all of it in one launch."""
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)
        if rope.cos is None:  # fused: norm, rotate and store in place inside qkv
            from yaie.kernels.elementwise.triton_fused import KVStore, qk_norm_rope_triton

            norms = (self.q_norm.weight, self.k_norm.weight) if self.qk_norm else (None, None)
            qk_norm_rope_triton(
                qkv,
                self.num_heads,
                self.num_kv_heads,
                self.head_dim,
                rope.positions,
                rope.inv_freq,
                rope.attention_scaling,
                *norms,
                eps=self.eps,
                store=KVStore(*pool),
            )
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        if rope.cos is not None:
            if self.qk_norm:  # Qwen3: per-head RMSNorm before rope
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, rope.cos, rope.sin), apply_rotary(k, rope.cos, rope.sin)
            k_cache, v_cache, slots, k_scale, v_scale = pool
            store_kv(k_cache, v_cache, k, v, slots, self.backend, k_scale, v_scale)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: RopeInputs,
        kv_cache: torch.Tensor,
        batch: ForwardBatch,
        kv_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [T, hidden], kv_cache [2, num_blocks, block_size, kv_heads, head_dim] -> [T, hidden];
        kv_scales [2, num_blocks, kv_heads, block_size] with an fp8 kv_cache, else None."""
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        scales = (None, None) if kv_scales is None else (kv_scales[0], kv_scales[1])
        q, _, _ = self._qkv(x, rope, (k_cache, v_cache, batch.slots, *scales))
        attend = partial(
            paged_attention,
            k_cache=k_cache,
            v_cache=v_cache,
            scale=self.scale,
            backend=self.backend,
            k_scale=scales[0],
            v_scale=scales[1],
        )
        if batch.split_at_attention is not None:  # a prefill graph's capture
            out = batch.split_at_attention(q, attend)
        else:
            out = attend(q, batch)
        return self.o_proj(out.reshape(x.shape[0], self.q_size))


class DecoderLayer(nn.Module):
    def __init__(
        self, cfg: ModelConfig, dtype: torch.dtype, backend: str, tp: TPGroup | None = None
    ) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, dtype, backend, tp)
        self.mlp = GatedMLP(
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.hidden_act,
            cfg.mlp_bias,
            dtype,
            backend,
            tp,
        )
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, backend)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, backend)

    def forward(
        self,
        h: torch.Tensor,
        residual: torch.Tensor | None,
        rope: RopeInputs,
        kv_cache: torch.Tensor,
        batch: ForwardBatch,
        kv_scales: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream is carried separately so that each residual add fuses with the
        norm after it; (h, residual) out sum to transformers' hidden state after this layer."""
        if residual is None:
            residual, h = h, self.input_layernorm(h)
        else:
            h, residual = self.input_layernorm.forward_add(h, residual)
        h = self.self_attn(h, rope, kv_cache, batch, kv_scales)
        h, residual = self.post_attention_layernorm.forward_add(h, residual)
        return self.mlp(h), residual


class DecoderStack(nn.Module):
    """Hugging Face's `model.` submodule: embeddings, layers, final norm (its weight names)."""

    def __init__(
        self, cfg: ModelConfig, dtype: torch.dtype, backend: str, tp: TPGroup | None = None
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, dtype, backend, tp) for _ in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, backend)
        self.rotary_emb = RotaryEmbedding(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)


class LlamaForCausalLM(CausalLM):
    """Serves LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and MistralForCausalLM.

    With tp (rank r of size ranks), num_kv_heads is this rank's share (its KV pool's width), and
    lm_head holds vocabulary rows vocab_range(vocab, r, size); the embeddings are replicated.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        dtype: torch.dtype,
        attention_backend: str = "auto",
        tp: TPGroup | None = None,
    ):
        super().__init__()
        self.config, self.tp = cfg, tp
        tp_rank, tp_size = (tp.rank, tp.size) if tp is not None else (0, 1)
        self.vocab_start, self.vocab_stop = vocab_range(cfg.vocab_size, tp_rank, tp_size)
        self.architecture, self.vocab_size, self.max_context = (
            cfg.architecture,
            cfg.vocab_size,
            cfg.max_context,
        )
        self.num_layers, self.num_kv_heads, self.head_dim = (
            cfg.num_layers,
            cfg.num_kv_heads // tp_size,
            cfg.head_dim,
        )
        self.dtype, self.attention_backend = dtype, attention_backend
        self.model = DecoderStack(cfg, dtype, attention_backend, tp)
        # Tied: the logits reuse the embedding matrix, so there is no lm_head parameter at all.
        if not cfg.tie_word_embeddings:
            num_rows = self.vocab_stop - self.vocab_start
            self.lm_head = nn.Linear(cfg.hidden_size, num_rows, bias=False, dtype=dtype)
        self.packed_logits: PackedLinear | None = None  # set by pack_cpu_linears()

    def pack_cpu_linears(self) -> int:
        """fp32 on the CPU without tensor parallelism: every linear layer and the logits over
        oneDNN-packed weights (models/cpu_linear.py says why); returns how many were packed. After
        it the weights are no longer parameters: call it once the weights are loaded."""
        if self.tp is not None or self.dtype != torch.float32:
            return 0
        count = pack_linears(self.model)
        if count:  # tied: a packed copy of the embeddings (the lookup needs them dense)
            self.packed_logits = PackedLinear(self.lm_head_weight(), None)
            if not self.config.tie_word_embeddings:
                self.lm_head = None
        return count + (count > 0)

    def lm_head_weight(self) -> torch.Tensor:
        """[vocab rows of this rank, hidden] (all of them without tp)."""
        if self.config.tie_word_embeddings:
            weight = self.model.embed_tokens.weight
            return weight if self.tp is None else weight[self.vocab_start : self.vocab_stop]
        return self.lm_head.weight

    def weight_slice(self, name: str) -> tuple[int, int, int] | None:
        if self.tp is None:
            return None
        return weight_slice(self.config, name, self.tp.rank, self.tp.size)

    def forward(
        self,
        batch: ForwardBatch,
        kv_cache: torch.Tensor,
        kv_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h, residual = self.hidden_states(batch, kv_cache, kv_scales)
        return self.logits(h, residual, batch.logits_indices)

    def hidden_states(
        self,
        batch: ForwardBatch,
        kv_cache: torch.Tensor,
        kv_scales: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer over every row: (h, residual) [T, hidden], before the final norm."""
        h = self.model.embed_tokens(batch.input_ids)  # [T, hidden]
        fused = use_triton(h, self.attention_backend)
        rope = self.model.rotary_emb.inputs(batch.positions, h.dtype, fused)
        residual = None
        for i, layer in enumerate(self.model.layers):
            scales = None if kv_scales is None else kv_scales[i]
            h, residual = layer(h, residual, rope, kv_cache[i], batch, scales)
        return h, residual

    def logits(self, h: torch.Tensor, residual: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Logits [len(rows), vocab] of hidden_states' rows in the model's dtype (the sampler's
        only; it converts as it reads: an fp32 copy costs 0.22 ms a step at 512 rows on the
        H200, benchmarks/NOTES.md)."""
        h, _ = self.model.norm.forward_add(h[rows], residual[rows])
        if self.tp is not None:
            return vocab_parallel_logits(h, self.lm_head_weight(), self.vocab_size, self.tp)
        if self.packed_logits is not None:
            return self.packed_logits(h)
        return F.linear(h, self.lm_head_weight())

    def _target(self, name: str) -> tuple[str, int | None] | None:
        """HF weight name -> (parameter name, shard index or None); None for weights to skip."""
        if name.endswith("rotary_emb.inv_freq"):  # buffers some old checkpoints carry
            return None
        if name == "lm_head.weight" and self.config.tie_word_embeddings:
            return None
        match = _FUSED_NAME.match(name)
        if match is None:
            return name, None
        fused, shard = _FUSED_SHARDS[match.group(2)]
        return f"{match.group(1)}.{fused}.{match.group(3)}", shard

    def _destination(self, param: nn.Parameter, param_name: str, shard: int | None) -> torch.Tensor:
        if shard is None:
            return param.data
        if ".qkv_proj." in param_name:
            offset, size = self.model.layers[0].self_attn.shard_ranges()[shard]
        else:
            size = self.model.layers[0].mlp.intermediate  # this rank's columns of gate and up
            offset = shard * size
        return param.data.narrow(0, offset, size)

    def _expected(self) -> set[tuple[str, int | None]]:
        expected: set[tuple[str, int | None]] = set()
        for name, _ in self.named_parameters():
            fused = name.split(".")[-2]
            shards = range(len(_SHARD_NAMES[fused])) if fused in _SHARD_NAMES else [None]
            expected.update((name, shard) for shard in shards)
        return expected

    @staticmethod
    def _hf_name(param_name: str, shard: int | None) -> str:
        if shard is None:
            return param_name
        fused = param_name.split(".")[-2]
        return param_name.replace(f".{fused}.", f".{_SHARD_NAMES[fused][shard]}.")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.named_parameters())
        loaded: set[tuple[str, int | None]] = set()
        unexpected: list[str] = []
        for name, tensor in weights:
            target = self._target(name)
            if target is None:
                continue
            if target[0] not in params:
                unexpected.append(name)
                continue
            dst = self._destination(params[target[0]], *target)
            if dst.shape != tensor.shape:
                raise ValueError(
                    f"weight {name} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(dst.shape)}"
                )
            dst.copy_(tensor)
            loaded.add(target)
        missing = [self._hf_name(*key) for key in self._expected() - loaded]
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(f"missing weights: {describe_names(missing)}")
            if unexpected:
                problems.append(f"unexpected weights: {describe_names(unexpected)}")
            raise ValueError(
                f"{self.architecture} checkpoint does not match: {'; '.join(problems)}"
            )
