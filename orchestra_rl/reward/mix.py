"""Outcome × efficiency × preference (docs/rewards.md), computed over a GROUP: the n rollouts of one task.

Group form:    R_i = o_i · m_i,  m_i = max(MIN_CORRECT_MULTIPLIER, 1 + P_cost·ĉ_i + P_lat·l̂_i + Σ_t P_t·n̂_{i,t})
               ĉ_i = (C_max − C_i)/(C_max − C_min),  l̂_i = (L_max − L_i)/(L_max − L_min)   (1 = cheapest/fastest)
               n̂_{i,t} = (n_{i,t} − n_t^min)/(n_t^max − n_t^min)                          (1 = most calls of t)
               A term is 0 when its max equals its min (to a relative 1e-9, so float summation noise in two
               equal costs never decides who gets 1 and who gets 0).
Absolute form: R_i = o_i − λ_c·C_i − λ_l·L_i  (no group statistics: for PPO with a critic).

Why the floor on m_i: with negative preference weights, 1 + Σ can reach 0 or below, and a correct answer would
then score no better than (or worse than) a wrong one, which scores 0. Clamping the multiplier at a small
positive floor keeps every correct answer at least MIN_CORRECT_MULTIPLIER·o_i above every wrong one, a margin
group advantages can see; the price is that correct answers below the floor tie with each other. The absolute
form has no such guarantee: λ_c·C_i can exceed 1 if the user sets it so.

Components logged per trajectory (reward_components): outcome, cost_usd, latency_s, cost_term, latency_term,
reward; the group form adds multiplier (m_i before the floor), tool_<t> (n̂_t), calls_<t> (n_t) and pref_<key>
(the weights used for this task).

Functions here return new Trajectory objects (dataclasses.replace: token lists are shared, not copied); the
inputs are left as they were.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from orchestra_rl.config import RewardConfig
from orchestra_rl.types import Task, Trajectory

MIN_CORRECT_MULTIPLIER = 0.1
PREFERENCE_AXES = ("cost", "latency")  # preference keys that are not tool names


def trajectory_cost(t: Trajectory, policy_tokens: bool = True) -> float:
    """C_i: every tool/expert call, the orchestrator's own tokens (unless policy_tokens is False), and the LLM
    judge that graded it, if any."""
    own = t.cost_usd if policy_tokens else t.tool_cost_usd
    return own + t.reward_components.get("judge_cost_usd", 0.0)


def preference_weights(cfg: RewardConfig, task: Task, tool_names: Sequence[str]) -> dict[str, float]:
    """P for one task: weights for "cost", "latency" and every tool name. Starts from the config (validated:
    its tool_weights name configured tools); with use_task_preference, each key of the task's own preference
    overrides the config's. A task's keys are data, not config, so they are checked here."""
    weights = {"cost": cfg.cost_weight, "latency": cfg.latency_weight, **dict.fromkeys(tool_names, 0.0),
               **cfg.tool_weights}
    if cfg.use_task_preference:
        unknown = [k for k in task.preference if k not in weights]
        if unknown:
            raise ValueError(f"task {task.task_id!r}: unknown tool {', '.join(map(repr, unknown))} in preference; "
                             f"known: {', '.join(weights)}")
        weights.update(task.preference)
    return weights


def normalised(values: Sequence[float], lower_is_better: bool) -> list[float]:
    """Min-max scale over the group to [0, 1]: 1 for the lowest value if lower_is_better, else for the highest.
    All 0 when the group does not differ."""
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):
        return [0.0] * len(values)
    return [(hi - v) / (hi - lo) if lower_is_better else (v - lo) / (hi - lo) for v in values]


def group_rewards(outcomes: Sequence[float], costs: Sequence[float], latencies: Sequence[float],
                  tool_counts: Sequence[dict[str, int]], weights: dict[str, float]) -> list[dict[str, float]]:
    """The group form on plain numbers. `weights` holds "cost", "latency" and one entry per tool; tool terms
    are computed for every tool in `weights`. Returns per member: reward and every component."""
    tools = [k for k in weights if k not in PREFERENCE_AXES]
    cost_terms = normalised(costs, lower_is_better=True)
    latency_terms = normalised(latencies, lower_is_better=True)
    tool_terms = {t: normalised([c.get(t, 0) for c in tool_counts], lower_is_better=False) for t in tools}
    rows = []
    for i, o in enumerate(outcomes):
        multiplier = (1.0 + weights["cost"] * cost_terms[i] + weights["latency"] * latency_terms[i]
                      + sum(weights[t] * tool_terms[t][i] for t in tools))
        row = {"outcome": o, "cost_usd": costs[i], "latency_s": latencies[i], "cost_term": cost_terms[i],
               "latency_term": latency_terms[i], "multiplier": multiplier,
               "reward": o * max(MIN_CORRECT_MULTIPLIER, multiplier)}
        row |= {f"tool_{t}": tool_terms[t][i] for t in tools}
        row |= {f"calls_{t}": float(tool_counts[i].get(t, 0)) for t in tools}
        row |= {f"pref_{k}": w for k, w in weights.items()}
        rows.append(row)
    return rows


def absolute_rewards(outcomes: Sequence[float], costs: Sequence[float], latencies: Sequence[float],
                     lambda_cost: float, lambda_latency: float) -> list[dict[str, float]]:
    """The absolute form: cost_term/latency_term are the (negative) amounts subtracted from the outcome."""
    rows = []
    for o, c, lat in zip(outcomes, costs, latencies, strict=True):
        cost_term, latency_term = -lambda_cost * c, -lambda_latency * lat
        rows.append({"outcome": o, "cost_usd": c, "latency_s": lat, "cost_term": cost_term,
                     "latency_term": latency_term, "reward": o + cost_term + latency_term})
    return rows


def mix_group(group: Sequence[Trajectory], outcomes: Sequence[float], task: Task, cfg: RewardConfig,
              tool_names: Sequence[str]) -> list[Trajectory]:
    """Score one task's group: new trajectories with `reward` and `reward_components` set (components already
    on the inputs, such as judge_cost_usd, are kept)."""
    if len(group) != len(outcomes):
        raise ValueError(f"task {task.task_id!r}: {len(group)} trajectories but {len(outcomes)} outcomes")
    costs = [trajectory_cost(t, cfg.policy_tokens_in_cost) for t in group]
    latencies = [t.latency_s for t in group]
    if cfg.mode == "group":
        rows = group_rewards(outcomes, costs, latencies, [t.tool_counts() for t in group],
                             preference_weights(cfg, task, tool_names))
    else:  # absolute
        rows = absolute_rewards(outcomes, costs, latencies, cfg.lambda_cost, cfg.lambda_latency)
    return [dataclasses.replace(t, reward=row["reward"], reward_components={**t.reward_components, **row})
            for t, row in zip(group, rows)]
