"""--overlap-depth: how many plans the step loop sends ahead of the oldest unread result (the
engine's outputs at each depth: tests/scheduler_service/engine/test_engine.py)."""

from __future__ import annotations

import argparse

import pytest

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.ops import flags


def _config(*argv: str) -> SchedulerConfig:
    parser = argparse.ArgumentParser()
    flags.add_scheduler_arguments(parser, "model")
    return flags.engine_config(parser.parse_args(list(argv)))


def test_two_plans_go_ahead_by_default_one_with_jump_forward_none_without_overlap():
    assert _config().plans_ahead == 2
    assert _config("--overlap-depth", "1").plans_ahead == 1
    assert _config("--overlap-depth", "3", "--jump-forward").plans_ahead == 1
    assert _config("--overlap-depth", "3", "--no-overlap").plans_ahead == 0


@pytest.mark.parametrize("depth", [0, -1])
def test_a_depth_below_one_is_refused(depth: int):
    with pytest.raises(ValueError, match="overlap_depth must be a positive int"):
        SchedulerConfig(overlap_depth=depth)
