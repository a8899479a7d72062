"""Scored trajectories → train samples: GRPO advantages per group; failed and degenerate groups left out."""

import dataclasses

import pytest

from orchestra_rl.config import AlgoConfig
from orchestra_rl.learner.samples import make_train_samples
from orchestra_rl.types import Turn
from tests.helpers import make_trajectory


def scored(task_id: str, reward: float, stop_reason: str = "answer"):
    return dataclasses.replace(make_trajectory(task_id), reward=reward, stop_reason=stop_reason)


def test_failed_trajectories_are_neither_trained_on_nor_counted_in_their_group():
    batch = [scored("a", 1.0), scored("a", 0.0), scored("a", 5.0, stop_reason="error"),  # failed: not the policy's
             scored("b", 1.0), scored("b", 1.0)]  # degenerate: no signal
    samples, stats = make_train_samples(batch, AlgoConfig(name="grpo", scale_by_std=False))
    assert stats == {"samples/kept": 2.0, "samples/failed_trajectories": 1.0, "samples/dropped_trajectories": 2.0,
                     "samples/staleness_mean": 0.0, "samples/staleness_max": 0.0}
    # Group a's mean is 0.5 over its two finished rollouts: the failed one's 5.0 does not shift it.
    assert [s.advantage for s in samples] == pytest.approx([0.5, -0.5])


def test_samples_keep_each_tokens_behaviour_logprobs_and_the_batch_says_how_stale_it_is():
    """train.mode=async: a trajectory whose turns were sampled by versions 3 and 4, trained at version 5."""
    old = scored("a", 1.0)
    old = dataclasses.replace(old, turns=[dataclasses.replace(Turn("", 1, "tool_call"), policy_version=v)
                                          for v in (3, 4)], logprobs=[0.0, -0.7])
    fresh = dataclasses.replace(scored("a", 0.0), turns=[Turn("", 1, "stop", policy_version=5)])
    assert old.policy_version == 3 and fresh.policy_version == 5
    samples, stats = make_train_samples([old, fresh], AlgoConfig(name="grpo"), version=5)
    assert [s.old_logprobs for s in samples] == [[0.0, -0.7], [0.0, -0.5]]
    assert stats["samples/staleness_max"] == 2.0 and stats["samples/staleness_mean"] == 1.0
