"""Scored trajectories → learner samples: GRPO advantages per group, or the raw reward for PPO's critic."""

from __future__ import annotations

import ray
import torch

from orchestra_rl.config import AlgoConfig
from orchestra_rl.learner.algorithms import degenerate_groups, grpo_advantages
from orchestra_rl.types import TrainSample, Trajectory


def make_train_samples(scored: list[Trajectory], algo: AlgoConfig,
                       version: int = 0) -> tuple[list[TrainSample], dict[str, float]]:
    """Returns the samples and how many trajectories were dropped: failed ones (stop_reason "error": the failure
    was not the policy's, so it neither learns from it nor counts it in its group's statistics), and groups with
    all-equal rewards (no GRPO signal: their advantages are all zero). The samples keep the behaviour logprobs
    each token was sampled with, whichever policy version that was: the loss's importance ratio is taken against
    them. Staleness: how many versions before `version` (the learners' now) a trajectory's oldest turn was sampled."""
    staleness = [version - t.policy_version for t in scored] or [0]
    failed = sum(t.stop_reason == "error" for t in scored)
    scored = [t for t in scored if t.stop_reason != "error"]
    rewards = torch.tensor([t.reward for t in scored], dtype=torch.float64)
    groups = [t.task_id for t in scored]
    keep = list(range(len(scored)))
    advantages = torch.zeros(len(scored), dtype=torch.float64)
    if algo.name == "grpo":
        if algo.drop_degenerate_groups:
            flat = degenerate_groups(rewards, groups)
            keep = [i for i in keep if groups[i] not in flat]
        advantages = grpo_advantages(rewards, groups, scale_by_std=algo.scale_by_std)
    samples = [TrainSample(token_ids=scored[i].token_ids, loss_mask=scored[i].loss_mask,
                           old_logprobs=scored[i].logprobs, advantage=float(advantages[i]),
                           reward=float(rewards[i])) for i in keep]
    return samples, {"samples/kept": float(len(samples)), "samples/failed_trajectories": float(failed),
                     "samples/dropped_trajectories": float(len(scored) - len(keep)),
                     "samples/staleness_mean": sum(staleness) / len(staleness),
                     "samples/staleness_max": float(max(staleness))}


# The same as a Ray task (num_returns=2): it reads the scored batch from the object store and leaves the samples
# there, for the learners to fetch.
make_train_samples_task = ray.remote(num_cpus=0, num_returns=2)(make_train_samples)
