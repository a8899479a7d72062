"""Summaries of a set of trajectories: accuracy, dollar cost, latency, tool-call mix and errors, per family."""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestra_rl.data.world import is_correct
from orchestra_rl.types import Task, Trajectory


def _summary(trajectories: list[Trajectory], gold: dict[str, str]) -> dict[str, Any]:
    n = len(trajectories)
    calls = Counter(name for t in trajectories for name in (c.name for c in t.tool_calls))
    return {
        "trajectories": n,
        "accuracy": fmean(is_correct(t.final_answer, gold[t.task_id]) for t in trajectories),
        "cost_usd": fmean(t.cost_usd for t in trajectories),
        "latency_s": fmean(t.latency_s for t in trajectories),
        "turns": fmean(len(t.turns) for t in trajectories),
        "policy_tokens": fmean(t.num_policy_tokens for t in trajectories),
        "tool_calls_per_trajectory": {name: calls[name] / n for name in sorted(calls)},
        "parse_errors": sum(1 for t in trajectories for turn in t.turns if turn.parse_error),
        "tool_errors": sum(1 for t in trajectories for c in t.tool_calls if c.result.error),
        "stop_reasons": dict(Counter(t.stop_reason for t in trajectories)),
    }


def summarize(trajectories: list[Trajectory], tasks: list[Task]) -> dict[str, Any]:
    """Overall and per-family metrics. Outcome is exact match after normalisation (the world's verifier)."""
    if not trajectories:
        raise ValueError("no trajectories to summarize")
    gold = {t.task_id: t.answer for t in tasks}
    families = sorted({t.family for t in trajectories})
    return {
        "overall": _summary(trajectories, gold),
        "families": {f: _summary([t for t in trajectories if t.family == f], gold) for f in families},
    }


def _mix(mix: dict[str, float]) -> str:
    return ", ".join(f"{name} {v:.2f}" for name, v in sorted(mix.items(), key=lambda kv: -kv[1])) or "-"


def print_summary(summary: dict[str, Any], title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    for col in ("family", "n", "accuracy", "$ cost", "latency s", "turns", "tool calls / trajectory",
                "parse err", "tool err"):
        table.add_column(col, justify="left" if col in ("family", "tool calls / trajectory") else "right")
    rows = list(summary["families"].items()) + [("all", summary["overall"])]
    for name, s in rows:
        table.add_row(name, str(s["trajectories"]), f"{s['accuracy']:.3f}", f"{s['cost_usd']:.6f}",
                      f"{s['latency_s']:.2f}", f"{s['turns']:.1f}", _mix(s["tool_calls_per_trajectory"]),
                      str(s["parse_errors"]), str(s["tool_errors"]))
    (console or Console(width=160)).print(table)


def print_comparison(before: dict[str, Any], after: dict[str, Any], console: Console | None = None) -> None:
    """Before vs after training, per family: reward, accuracy, $ cost, latency and tool mix."""
    table = Table(title="evaluation before → after training")
    for col in ("family", "reward", "accuracy", "$ cost", "latency s", "tool calls / trajectory (after)"):
        table.add_column(col, justify="left" if col in ("family", "tool calls / trajectory (after)") else "right")
    rows = [(f, before["families"][f], after["families"][f]) for f in after["families"] if f in before["families"]]
    rows.append(("all", before["overall"], after["overall"]))
    for name, b, a in rows:
        table.add_row(name, f"{b.get('reward', 0):.3f} → {a.get('reward', 0):.3f}",
                      f"{b['accuracy']:.3f} → {a['accuracy']:.3f}", f"{b['cost_usd']:.6f} → {a['cost_usd']:.6f}",
                      f"{b['latency_s']:.2f} → {a['latency_s']:.2f}", _mix(a["tool_calls_per_trajectory"]))
    (console or Console(width=160)).print(table)
