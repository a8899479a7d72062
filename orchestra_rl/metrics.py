"""Statistics of a batch of trajectories: the one definition behind a training step's metrics and an evaluation's
report (means per trajectory; errors as counts)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from statistics import fmean
from typing import Any

from orchestra_rl.types import UNKNOWN_TOOL, Trajectory

# Tool kinds whose arguments must carry the task's own inputs: a python call's code, a search's query.
COPYING_KINDS = ("python", "search")
NO_CALL = "no_call"  # first_calls' name for a trajectory that called no tool
_NUMBER = re.compile(r"\d[\d,]*\d|\d")  # thousands separators allowed, as passages may write them
# A name: capitalised words in a row ("Fonbrouk Holdings"); a single capitalised word opening the question is the
# question word ("What", "In"), not a name.
_NAME = re.compile(r"[A-Z][a-z]+(?: [A-Z][a-z]+)*")


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


def scored_outcome(t: Trajectory) -> float | None:
    """A trajectory's outcome reward once the reward actor scored it (None before)."""
    return t.reward_components.get("outcome")


def first_calls(trajectories: list[Trajectory], tool_names: Collection[str] | None = None,
                group: Callable[[Trajectory], str] = lambda t: t.family,
                outcome: Callable[[Trajectory], float | None] = scored_outcome,
                ) -> dict[str, dict[str, dict[str, float | None]]]:
    """The routing decision per group of trajectories (their family unless `group` says otherwise) and what it
    earned: {group: {tool: {"share": of the group's trajectories whose first call went to tool, "trajectories":
    how many, "outcome": their mean `outcome` (None where there is none yet)}}}. A trajectory that called nothing
    counts under NO_CALL, a name outside `tool_names` under UNKNOWN_TOOL."""
    routed: dict[str, dict[str, list[Trajectory]]] = {}
    for t in trajectories:
        name = t.tool_calls[0].name if t.tool_calls else NO_CALL
        if name != NO_CALL and tool_names is not None and name not in tool_names:
            name = UNKNOWN_TOOL
        routed.setdefault(group(t), {}).setdefault(name, []).append(t)
    stats = {}
    for key, by_tool in sorted(routed.items()):
        n = sum(len(trajs) for trajs in by_tool.values())
        stats[key] = {}
        for name, trajs in sorted(by_tool.items()):
            outcomes = [o for t in trajs if (o := outcome(t)) is not None]
            stats[key][name] = {"share": len(trajs) / n, "trajectories": len(trajs),
                                "outcome": fmean(outcomes) if outcomes else None}
    return stats


def copying_tools(tools: Mapping[str, Any]) -> dict[str, str]:
    """name -> kind of the configured tools (cfg.tools.tools) whose calls argument_fidelity judges."""
    return {name: t.kind for name, t in tools.items() if t.kind in COPYING_KINDS}


def numbers_in(text: str) -> set[str]:
    return {m.replace(",", "") for m in _NUMBER.findall(text)}


def names_in(question: str) -> set[str]:
    return {m.group() for m in _NAME.finditer(question) if not (m.start() == 0 and " " not in m.group())}


def faithful_call(kind: str, arguments: dict[str, Any], question: str, earlier_results: list[str]) -> bool:
    """Whether a call's arguments carry the task's inputs verbatim. python: its code uses numbers, and every one
    of them is written in the question or in an earlier tool response (copied, not invented or garbled). search:
    its query contains one of the question's names, or a number of it when it names nothing."""
    text = " ".join(str(v) for v in arguments.values())
    if kind == "python":
        used = numbers_in(text)
        return bool(used) and used <= numbers_in(" ".join([question, *earlier_results]))
    keys = names_in(question) or numbers_in(question)
    return any(key in text for key in keys)


def argument_fidelity(trajectories: list[Trajectory], questions: Mapping[str, str],
                      copying: Mapping[str, str]) -> float | None:
    """The share of calls to `copying` tools (name -> kind) whose arguments carry the task's numbers or names
    verbatim (faithful_call): whether the policy can copy what a cheap local tool needs. None: no such call."""
    verdicts = []
    for t in trajectories:
        results: list[str] = []
        for call in t.tool_calls:
            if call.name in copying:
                verdicts.append(faithful_call(copying[call.name], call.arguments, questions[t.task_id], results))
            results.append(call.result.text)
    return fmean(verdicts) if verdicts else None
