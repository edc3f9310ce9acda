"""The worker's protobuf edge (wire.py): SamplingConfig and the worker proto's SamplingParams have
the same fields, a config crosses the wire unchanged, and a new request whose sampling does not
decode is rejected alone (at the edge and on the other ranks of a group)."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest

from yaie.kernels.sampling import SamplingConfig
from yaie.worker.v1 import worker_pb2
from yaie.worker_service.protocol import NewRequestSpec, StepOutput
from yaie.worker_service.wire import (
    BadPlan,
    plan_from_bytes,
    plan_from_proto,
    plan_to_bytes,
    result_to_proto,
)

# Every field off its default; the floats are exact in fp32 (the wire's float).
EVERY_FIELD = SamplingConfig(
    temperature=0.5,
    top_p=0.75,
    top_k=7,
    min_p=0.125,
    repetition_penalty=1.25,
    frequency_penalty=-0.5,
    presence_penalty=0.25,
    seed=2**64 - 1,
    logit_bias={3: -1.5, 9: 2.0},
    top_logprobs=4,
    return_logprobs=True,
)


def _new_request(request_id: int, **sampling: object) -> worker_pb2.NewRequest:
    params = SamplingConfig(temperature=0.0).message_fields() | sampling
    return worker_pb2.NewRequest(
        request_id=request_id,
        token_ids=[5, 6, 7],
        num_prompt_tokens=3,
        sampling=worker_pb2.SamplingParams(**params),
    )


def test_sampling_params_and_sampling_config_have_the_same_fields() -> None:
    """A sampling option added to one of them and not the other fails here, by name."""
    config_names = {f.name for f in fields(SamplingConfig)}
    proto_names = {f.name for f in worker_pb2.SamplingParams.DESCRIPTOR.fields}
    assert config_names - proto_names == set(), "SamplingConfig fields missing from the proto"
    assert proto_names - config_names == set(), "SamplingParams fields missing from the config"


def test_a_sampling_config_crosses_the_wire_unchanged() -> None:
    message = worker_pb2.SamplingParams(**EVERY_FIELD.message_fields())
    wire = worker_pb2.SamplingParams.FromString(message.SerializeToString())
    assert SamplingConfig.from_message(wire) == EVERY_FIELD
    default = SamplingConfig()
    assert SamplingConfig.from_message(worker_pb2.SamplingParams(**default.message_fields())) == (
        default
    )


def test_from_message_reads_any_object_with_the_fields_and_copies_mappings() -> None:
    bias = {4: 1.0}
    source = SimpleNamespace(**(EVERY_FIELD.message_fields() | {"logit_bias": bias}))
    config = SamplingConfig.from_message(source)
    assert config == SamplingConfig(**(EVERY_FIELD.message_fields() | {"logit_bias": {4: 1.0}}))
    bias[5] = 2.0
    assert dict(config.logit_bias) == {4: 1.0}  # a copy: the source's later changes stay out
    assert type(EVERY_FIELD.message_fields()["logit_bias"]) is dict
    with pytest.raises(AttributeError):
        SamplingConfig.from_message(SimpleNamespace(temperature=1.0))
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig.from_message(SimpleNamespace(**(source.__dict__ | {"top_p": 0.0})))


def test_a_new_request_with_bad_sampling_is_rejected_alone() -> None:
    message = worker_pb2.StepPlan(
        step_id=3,
        new_requests=[_new_request(1), _new_request(2, top_p=0.0), _new_request(3)],
        run_request_ids=[1, 2, 3],
        run_num_tokens=[3, 3, 3],
        run_num_new_blocks=[1, 1, 1],
        new_block_ids=[0, 1, 2],
    )
    plan = plan_from_proto(message)
    assert [spec.request_id for spec in plan.new_requests] == [1, 3]
    assert list(plan.rejected_requests) == [2] and "top_p" in plan.rejected_requests[2]
    assert [entry.request_id for entry in plan.run] == [1, 2, 3]  # the runner fails 2's entry


def test_a_rejected_request_reaches_the_other_ranks_as_a_release() -> None:
    """The other ranks drop it (and a live request of its id) as rank 0 does, so every rank
    runs the same batch."""
    message = worker_pb2.StepPlan(
        step_id=4,
        new_requests=[_new_request(2, top_p=0.0), _new_request(2), _new_request(5)],
        run_request_ids=[2, 5],
        run_num_tokens=[3, 3],
        run_num_new_blocks=[1, 1],
        new_block_ids=[0, 1],
        release_request_ids=[9],
    )
    plan = plan_from_proto(message)
    shared = plan_from_bytes(plan_to_bytes(plan))
    assert [spec.request_id for spec in shared.new_requests] == [5]
    assert shared.release_request_ids == [9, 2] and shared.rejected_requests == {}
    assert shared.run == plan.run and shared.new_requests[0] == plan.new_requests[-1]


def test_a_plan_that_cannot_run_says_what_to_drop() -> None:
    message = worker_pb2.StepPlan(
        step_id=5,
        run_request_ids=[1, 2],
        run_num_tokens=[1],
        run_num_new_blocks=[0, 0],
        release_request_ids=[7],
    )
    with pytest.raises(BadPlan, match="differ in length") as bad:
        plan_from_proto(message)
    assert (bad.value.step_id, bad.value.drop_request_ids, bad.value.num_run) == (5, [7, 1, 2], 2)
    with pytest.raises(BadPlan, match="not increasing"):
        plan_from_proto(worker_pb2.StepPlan(step_id=5), last_step_id=5)


def test_step_output_and_new_request_spec_have_the_fields_of_their_messages() -> None:
    """wire.py copies them field by field: a field added to one side only fails here."""
    for dataclass, message in (
        (StepOutput, worker_pb2.StepResult),
        (NewRequestSpec, worker_pb2.NewRequest),
    ):
        assert {f.name for f in fields(dataclass)} == {f.name for f in message.DESCRIPTOR.fields}
    output = StepOutput(3, [5, -1], [-0.5], [5, 6], [-0.5, -1.5], 1.5, 0.25, "", {8: "bad"})
    result = result_to_proto(output)
    assert (result.step_id, list(result.token_ids)) == (3, [5, -1])
    assert list(result.top_token_ids) == [5, 6]
    assert (list(result.logprobs), list(result.top_logprobs)) == ([-0.5], [-0.5, -1.5])
    assert (result.forward_ms, result.sample_ms, result.error) == (1.5, 0.25, "")
    assert [(e.request_id, e.message) for e in result.request_errors] == [(8, "bad")]
