"""Scored trajectories → train samples: GRPO advantages per group; failed and degenerate groups left out."""

import dataclasses

import pytest

from orchestra_rl.config import AlgoConfig
from orchestra_rl.learner.samples import make_train_samples
from tests.helpers import make_trajectory


def scored(task_id: str, reward: float, stop_reason: str = "answer"):
    return dataclasses.replace(make_trajectory(task_id), reward=reward, stop_reason=stop_reason)


def test_failed_trajectories_are_neither_trained_on_nor_counted_in_their_group():
    batch = [scored("a", 1.0), scored("a", 0.0), scored("a", 5.0, stop_reason="error"),  # failed: not the policy's
             scored("b", 1.0), scored("b", 1.0)]  # degenerate: no signal
    samples, stats = make_train_samples(batch, AlgoConfig(name="grpo", scale_by_std=False))
    assert stats == {"samples/kept": 2.0, "samples/failed_trajectories": 1.0, "samples/dropped_trajectories": 2.0}
    # Group a's mean is 0.5 over its two finished rollouts: the failed one's 5.0 does not shift it.
    assert [s.advantage for s in samples] == pytest.approx([0.5, -0.5])
