"""The model runner: plan -> validate -> ForwardBatch -> model -> sample -> results.

launch() queues a step's device work and returns at once with a PendingStep; its wait() reads
the step's single device-to-host copy. Steps of one stream launch and wait in step order, so plan
N+1 can be launched before result N is read: decodes read their input token on the device.

Under tensor parallelism rank 0's runner shares every change to a request table (each plan,
each release, each closed table) with the other ranks, whose runners apply the same changes
(tp/ranks.follow_plans), so every rank builds the same batches and runs the same collectives.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING

import torch

from yaie.kernels.batch_invariant import batch_invariant_mode
from yaie.worker_service.protocol import Plan, StepOutput
from yaie.worker_service.step.batch_builder import ScheduledEntry, build_forward_batch
from yaie.worker_service.step.cuda_graphs import DecodeGraphs
from yaie.worker_service.step.grammar import GrammarBackend
from yaie.worker_service.step.grammar_step import (
    GrammarMasks,
    advance_grammars,
    catch_up_before_run,
)
from yaie.worker_service.step.kv_pool import KVPool
from yaie.worker_service.step.mixed_graphs import DEFAULT_MAX_TOKENS as MIXED_MAX_TOKENS
from yaie.worker_service.step.mixed_graphs import MixedGraphs
from yaie.worker_service.step.prefill_graphs import DEFAULT_MAX_TOKENS, PrefillGraphs
from yaie.worker_service.step.request_state import RequestState, RequestTable, check_run_entry
from yaie.worker_service.step.sampling_step import PendingStep, StepTimer, sample_entries
from yaie.worker_service.tp.plan_channel import PlanOp, share_plan

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 2  # launched steps of one stream whose results are not read yet


class ModelRunner:
    """The only place where step plans meet tensors. One per process; not thread-safe."""

    def __init__(
        self,
        model: torch.nn.Module,
        pool: KVPool,
        use_cuda_graphs: bool = False,
        max_graph_batch_size: int = 256,
        tp: TPGroup | None = None,
        cascade: bool = False,
        grammars: GrammarBackend | None = None,
        deterministic: bool = False,
        max_prefill_graph_tokens: int = DEFAULT_MAX_TOKENS,
        max_mixed_graph_tokens: int = MIXED_MAX_TOKENS,
    ) -> None:
        self.model = model
        # Batch-invariant mode (kernels/batch_invariant): each forward and the graph capture
        # run inside it, and decode attention is kept for generated tokens (every prompt token
        # takes extend attention, however its prompt was chunked or cached).
        self.deterministic = deterministic
        self.grammars = grammars  # structured output (None: constrained requests fail)
        self.vocab_size = int(model.vocab_size)
        self.grammar_masks = GrammarMasks(self.vocab_size) if grammars is not None else None
        self.cascade = cascade  # decode steps group rows that share cached prefix blocks
        self.pool = pool
        self.tp = tp
        self._table_ids: dict[int, int] = {}  # id(table) -> the id the other ranks know it by
        self._next_table_id = itertools.count(1)
        self.device = pool.cache.device
        self.max_context = int(model.max_context)
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self.mixed_graphs: MixedGraphs | None = None
        self.device_failure: str | None = None  # set on a device error: the process must exit
        # Decode graphs are captured with tp None only: capturing the NCCL all-reduce and
        # all-gather is possible but not yet verified on a multi-GPU machine.
        if use_cuda_graphs and tp is not None:
            log.info("tensor parallelism: decode runs eagerly (no CUDA graphs)")
        if use_cuda_graphs and self.device.type == "cuda" and tp is None:
            max_blocks = -(-self.max_context // pool.block_size)
            self.graphs = DecodeGraphs(model, pool, max_graph_batch_size, max_blocks, cascade)
            with batch_invariant_mode(deterministic):
                self.graphs.capture()
            # Not in deterministic mode: its eager path is the one verified batch-invariant.
            # Small steps of few requests replay one whole graph; the rest, up to
            # max_prefill_graph_tokens, the piecewise graphs (attention eager between pieces).
            mixed_tokens = min(max_mixed_graph_tokens, max_prefill_graph_tokens)
            if mixed_tokens > 0 and not deterministic:
                self.mixed_graphs = MixedGraphs(model, pool, mixed_tokens, max_blocks)
                self.mixed_graphs.capture()
            if max_prefill_graph_tokens > 0 and not deterministic:
                self.prefill_graphs = PrefillGraphs(model, pool, max_prefill_graph_tokens)
                self.prefill_graphs.capture()

    def new_table(self) -> RequestTable:
        table = RequestTable(self.device)
        if self.tp is not None:
            self._table_ids[id(table)] = next(self._next_table_id)
        return table

    def release(self, table: RequestTable, request_ids: list[int]) -> None:
        """Drops requests from table outside any step (a plan that failed to decode)."""
        if request_ids:
            self._share(PlanOp.LAUNCH, table, Plan(0, [], [], list(request_ids)))
        for request_id in request_ids:
            table.release(request_id)

    def close_table(self, table: RequestTable) -> None:
        """The stream of table ended: its requests are gone."""
        self._share(PlanOp.CLOSE, table)
        self._table_ids.pop(id(table), None)
        table.clear()

    def _share(self, op: PlanOp, table: RequestTable, plan: Plan | None = None) -> bool:
        """Rank 0 of a group: sends op to the other ranks. False when the group is broken (a
        rank died): device_failure is set, the process must exit."""
        if self.tp is None or self.tp.rank != 0:
            return True
        try:
            share_plan(self.tp, op, self._table_ids[id(table)], plan)
            return True
        except RuntimeError as exc:
            log.critical("cannot reach the other tensor-parallel ranks: %s", exc)
            self.device_failure = f"tensor-parallel group broken: {exc}"
            return False

    @torch.inference_mode()
    def launch(self, table: RequestTable, plan: Plan) -> PendingStep:
        """Applies the plan to table and queues its forward pass and sampling."""
        started = time.perf_counter()
        output = StepOutput(plan.step_id, token_ids=[-1] * len(plan.run))
        if not self._share(PlanOp.LAUNCH, table, plan):
            output.error = self.device_failure
            return PendingStep.done(output)
        for request_id in plan.release_request_ids:
            table.release(request_id)
        self._admit(table, plan, output)
        entries = self._schedule(table, plan, output)
        if not entries:
            return PendingStep.done(output)
        try:
            pending = self._execute(table, entries, output)
            output.launch_ms = (time.perf_counter() - started) * 1e3
            return pending
        except Exception as exc:  # a device or model failure fails the whole step
            log.exception("step %d failed", plan.step_id)
            # A device error leaves the GPU unusable, and the ranks of a group may now be out of
            # step: both are fatal. A plain Python error fails this step only.
            if _is_device_error(exc) or self.tp is not None:
                self.device_failure = f"{type(exc).__name__}: {exc}"
            for entry in plan.run:
                table.release(entry.request_id)
            return PendingStep.done(
                StepOutput(
                    plan.step_id,
                    token_ids=[-1] * len(plan.run),
                    error=f"{type(exc).__name__}: {exc}",
                )
            )

    def _fail(self, table: RequestTable, output: StepOutput, request_id: int, message: str) -> None:
        """A request-scoped error: the request is dropped, the rest of the step runs."""
        output.request_errors.setdefault(request_id, message)
        table.release(request_id)

    def _admit(self, table: RequestTable, plan: Plan, output: StepOutput) -> None:
        for request_id, message in plan.rejected_requests.items():
            self._fail(table, output, request_id, f"bad NewRequest: {message}")
        for spec in plan.new_requests:
            if spec.request_id in table or spec.request_id in output.request_errors:
                self._fail(
                    table,
                    output,
                    spec.request_id,
                    f"NewRequest for request {spec.request_id}, which is already live",
                )
                continue
            try:
                state = table.add(spec, self.pool.block_size, self.max_context, self.vocab_size)
            except (ValueError, TypeError) as exc:
                self._fail(table, output, spec.request_id, f"bad NewRequest: {exc}")
                continue
            if spec.sampling.is_constrained:
                self._add_grammar(table, output, state)

    def _add_grammar(self, table: RequestTable, output: StepOutput, state: RequestState) -> None:
        """The request's matcher (compiled once per distinct constraint); a constraint that
        does not compile fails this request only."""
        try:
            if self.grammars is None:
                raise ValueError("this worker does not serve structured output")
            earlier_output = state.token_ids[state.num_prompt_tokens :]
            state.grammar = self.grammars.new_grammar(state.sampling, earlier_output)
        except ValueError as exc:
            self._fail(table, output, state.request_id, f"constraint: {exc}")

    def _schedule(
        self, table: RequestTable, plan: Plan, output: StepOutput
    ) -> list[ScheduledEntry]:
        """Validates each run entry; a bad one fails its request only."""
        seen: set[int] = set()  # a request that runs twice fails before any entry is scheduled
        for entry in plan.run:
            if entry.request_id in seen:
                self._fail(table, output, entry.request_id, "request runs twice in one step")
            seen.add(entry.request_id)
        entries = []
        bs, max_context = self.pool.block_size, self.max_context
        for index, entry in enumerate(plan.run):
            if entry.request_id in output.request_errors:
                continue
            state = table.get(entry.request_id)
            if state is None:
                self._fail(table, output, entry.request_id, f"unknown request {entry.request_id}")
                continue
            position = state.num_computed
            if (  # the usual row, a decode with room in its table: check_run_entry would pass it
                entry.num_tokens == 1
                and not entry.new_block_ids
                and position >= len(state.token_ids)
                and position < max_context
                and position < len(state.block_table) * bs
            ):
                entries.append(ScheduledEntry(index, state, position, 1, True, True))
                continue
            try:
                catch_up_before_run(state, entry.num_tokens)
                samples = check_run_entry(state, entry, bs, self.pool.num_blocks, max_context)
            except ValueError as exc:
                self._fail(table, output, entry.request_id, str(exc))
                continue
            if entry.new_block_ids:
                table.append_blocks(state, entry.new_block_ids)
            is_decode = state.num_computed >= len(state.token_ids)
            entries.append(
                ScheduledEntry(
                    index, state, state.num_computed, entry.num_tokens, samples, is_decode
                )
            )
        return entries

    def _execute(
        self, table: RequestTable, entries: list[ScheduledEntry], output: StepOutput
    ) -> PendingStep:
        timer = StepTimer(self.device)
        # One-token entries first (stable): in a mixed step they take decode attention, which
        # reads each request's KV once per kv head, where extend attention reads it per q head.
        # Deterministic: decodes of generated tokens first (only they take decode attention).
        if self.deterministic:
            entries.sort(key=lambda e: not e.is_decode)
        else:
            entries.sort(key=lambda e: e.num_tokens != 1)
        max_groups = 0
        if self.cascade:  # as many groups as a decode step's graph holds (eager, mixed: no bound)
            graphs, n = self.graphs, len(entries)
            decode = graphs is not None and all(e.num_tokens == 1 for e in entries)
            max_groups = graphs.group_slots(n) if decode else n
        batch, sample_rows = build_forward_batch(
            entries, table, self.pool.block_size, max_groups, single_by_decode=self.deterministic
        )
        if self.graphs is not None and self.graphs.can_run(batch):
            logits = self.graphs.run(batch)
        elif self.mixed_graphs is not None and self.mixed_graphs.can_run(batch):
            logits = self.mixed_graphs.run(batch)
        elif self.prefill_graphs is not None and self.prefill_graphs.can_run(batch):
            logits = self.prefill_graphs.run(batch)
        else:
            with batch_invariant_mode(self.deterministic):
                # [num_sampled, vocab] fp32
                logits = self.model.forward(batch, self.pool.cache, self.pool.scales)
        timer.mark()
        if any(e.samples and e.state.grammar is not None for e in entries):
            started = time.perf_counter()
            entries, keep = advance_grammars(entries)  # waits for constrained rows only
            if keep is not None:
                rows = torch.tensor(keep, dtype=torch.int64, device=logits.device)
                logits, sample_rows = logits[rows], sample_rows[rows]
            assert self.grammar_masks is not None, "a constrained request without grammars"
            self.grammar_masks.apply(logits, [e for e in entries if e.samples])
            output.grammar_ms = (time.perf_counter() - started) * 1e3
        pending = sample_entries(
            logits, entries, sample_rows, table, self.vocab_size, output, timer
        )
        for e in entries:
            e.state.num_computed += e.num_tokens
            if e.samples:
                e.state.num_sampled += 1
        return pending


def _is_device_error(exc: BaseException) -> bool:
    """A CUDA/accelerator error (the context may be corrupt), not a Python or shape error."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and "CUDA error" in str(exc)
