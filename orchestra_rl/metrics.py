"""Statistics of a batch of trajectories: the one definition behind a training step's metrics and an evaluation's
report (means per trajectory; errors as counts)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from statistics import fmean
from typing import Any

from orchestra_rl.types import Trajectory


def trajectory_stats(trajectories: list[Trajectory], tool_names: Collection[str] | None = None) -> dict[str, Any]:
    """Calls to names outside `tool_names` (if given) count as UNKNOWN_TOOL (types.Trajectory.tool_counts)."""
    n = len(trajectories)
    calls: Counter = Counter()
    for t in trajectories:
        calls.update(t.tool_counts(tool_names))
    return {
        "trajectories": n,
        "cost_usd": fmean(t.cost_usd for t in trajectories),
        "latency_s": fmean(t.latency_s for t in trajectories),
        "turns": fmean(len(t.turns) for t in trajectories),
        "policy_tokens": fmean(t.num_policy_tokens for t in trajectories),
        "tokens": sum(len(t.token_ids) for t in trajectories),
        "tool_calls_per_trajectory": {name: calls[name] / n for name in sorted(calls)},
        "parse_errors": sum(1 for t in trajectories for turn in t.turns if turn.parse_error),
        "tool_errors": sum(1 for t in trajectories for c in t.tool_calls if c.result.error),
        "failed": sum(t.stop_reason == "error" for t in trajectories),  # see Trajectory.error
        "stop_reasons": dict(Counter(t.stop_reason for t in trajectories)),
    }
