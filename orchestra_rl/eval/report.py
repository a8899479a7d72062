"""Summaries of a set of trajectories: accuracy, pass^k, dollar cost, latency, tool-call mix and errors, per
family (a τ²-Bench source is a family of its own), and where each kind of question was routed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from math import comb
from statistics import fmean
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestra_rl.metrics import argument_fidelity, first_calls, trajectory_stats
from orchestra_rl.reward.outcome import outcome_score, solved
from orchestra_rl.types import Task, Trajectory


def pass_hat_k(trials: list[tuple[int, int]], k: int) -> float:
    """τ²-Bench's pass^k over tasks given as (trials n, successes c): the chance that k of a task's n trials, drawn
    without replacement, all succeed — C(c, k) / C(n, k) — averaged over the tasks. pass^1 is the accuracy; a
    higher k rewards reliability over luck."""
    if not trials or any(n < k for n, _ in trials):
        raise ValueError(f"pass^{k} needs at least {k} trials of every task")
    return fmean(comb(c, k) / comb(n, k) for n, c in trials)


def _trials(trajectories: list[Trajectory], tasks: dict[str, Task]) -> list[tuple[int, int]]:
    by_task: dict[str, list[bool]] = defaultdict(list)
    for t in trajectories:
        by_task[t.task_id].append(solved(t, tasks[t.task_id]))
    return [(len(v), sum(v)) for v in by_task.values()]


def _summary(trajectories: list[Trajectory], tasks: dict[str, Task], tool_names: Collection[str] | None,
             copying: Mapping[str, str]) -> dict[str, Any]:
    accuracy = fmean(solved(t, tasks[t.task_id]) for t in trajectories)
    trials = _trials(trajectories, tasks)
    # pass^k for every k all tasks were tried that often (k = 1 .. the group size of an eval)
    pass_hat = {f"pass^{k}": pass_hat_k(trials, k) for k in range(1, min(n for n, _ in trials) + 1)}
    fidelity = argument_fidelity(trajectories, {t.task_id: tasks[t.task_id].question for t in trajectories}, copying)
    return {"accuracy": accuracy, "tasks": len(trials), **pass_hat, **trajectory_stats(trajectories, tool_names),
            "argument_fidelity": fidelity}


def task_results(trajectories: list[Trajectory], tasks: list[Task]) -> list[dict[str, Any]]:
    """One record per task over its trials: successes, the grade of each trial (the environment's, or the answer
    rules'), how each ended, mean $ cost and latency. What an eval writes as tasks.json."""
    by_id = {t.task_id: t for t in tasks}
    trials: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        trials[t.task_id].append(t)
    records = []
    for task_id, group in trials.items():
        task = by_id[task_id]
        group.sort(key=lambda t: t.group_index)
        records.append({
            "task_id": task_id, "env": task.env, "family": task.family, "trials": len(group),
            "successes": sum(solved(t, task) for t in group),
            "outcomes": [outcome_score(t, task) for t in group],
            "stop_reasons": [t.stop_reason for t in group],
            "terminations": [t.env_info.get("termination") for t in group],  # an environment's own (τ²: user_stop...)
            "errors": [t.error for t in group if t.error],
            "cost_usd": fmean(t.cost_usd for t in group), "latency_s": fmean(t.latency_s for t in group),
            "turns": fmean(len(t.turns) for t in group),
        })
    return records


def question_kind(task: Task) -> str:
    """The task's family, and for the world's fact questions what they ask ("lookup/population",
    "multihop/founded+birth_year"): a policy may route by what a question asks, not only by its family."""
    attributes = dict.fromkeys(task.metadata.get("attributes") or ())
    return f"{task.family}/{'+'.join(attributes)}" if attributes else task.family


def summarize(trajectories: list[Trajectory], tasks: list[Task], tool_names: Collection[str] | None = None,
              copying: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Overall and per-family metrics, and the routes: per question kind, the share of first calls to each tool
    and the accuracy of the trajectories that took it (metrics.first_calls; "outcome" is their accuracy here).
    Accuracy counts the trajectories that solved their task (reward.outcome: the rules, or the environment's
    grader; never the LLM judge). Calls to names outside `tool_names` (if given) count as UNKNOWN_TOOL. `copying`
    (name -> kind, metrics.copying_tools): the tools whose calls the argument fidelity judges (None where there
    are none)."""
    if not trajectories:
        raise ValueError("no trajectories to summarize")
    by_id = {t.task_id: t for t in tasks}
    families = sorted({t.family for t in trajectories})
    return {
        "overall": _summary(trajectories, by_id, tool_names, copying or {}),
        "families": {f: _summary([t for t in trajectories if t.family == f], by_id, tool_names, copying or {})
                     for f in families},
        "routes": first_calls(trajectories, tool_names, group=lambda t: question_kind(by_id[t.task_id]),
                              outcome=lambda t: float(solved(t, by_id[t.task_id]))),
    }


def _mix(mix: dict[str, float]) -> str:
    return ", ".join(f"{name} {v:.2f}" for name, v in sorted(mix.items(), key=lambda kv: -kv[1])) or "-"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_summary(summary: dict[str, Any], title: str, console: Console | None = None) -> None:
    """One row per family and one for all: trajectories, accuracy, pass^2 .. pass^k where every task had k trials
    (the accuracy is pass^1), $ cost and latency per trajectory, turns, tool mix, argument fidelity, errors."""
    table = Table(title=title)
    rows = list(summary["families"].items()) + [("all", summary["overall"])]
    ks = [key for key in summary["overall"] if key.startswith("pass^") and key != "pass^1"]
    for col in ("family", "n", "accuracy", *ks, "$ cost", "latency s", "turns", "tool calls / trajectory",
                "arg fidelity", "parse err", "tool err"):
        table.add_column(col, justify="left" if col in ("family", "tool calls / trajectory") else "right")
    for name, s in rows:
        table.add_row(name, str(s["trajectories"]), f"{s['accuracy']:.3f}", *(f"{s[k]:.3f}" for k in ks),
                      f"{s['cost_usd']:.6f}", f"{s['latency_s']:.2f}", f"{s['turns']:.1f}",
                      _mix(s["tool_calls_per_trajectory"]), _share(s.get("argument_fidelity")),
                      str(s["parse_errors"]), str(s["tool_errors"]))
    (console or Console(width=160)).print(table)


def print_routes(routes: dict[str, dict[str, dict[str, Any]]], title: str, console: Console | None = None) -> None:
    """One row per question kind: its trajectories, then each first call's share and the accuracy behind it."""
    table = Table(title=title)
    for col in ("question kind", "n", "first call: share (accuracy of those trajectories)"):
        table.add_column(col, justify="right" if col == "n" else "left")
    for kind, by_tool in routes.items():
        ranked = sorted(by_tool.items(), key=lambda kv: -kv[1]["share"])
        table.add_row(kind, str(sum(r["trajectories"] for r in by_tool.values())), ", ".join(
            f"{name} {r['share']:.2f} ({_share(r['outcome'])})" for name, r in ranked))
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


def load_train_reports(paths: list[str]) -> dict[str, dict[str, Any]]:
    """train_report.json files (or folders searched for them, e.g. a Hydra multirun folder), labelled by the
    Hydra overrides of their job (`.hydra/overrides.yaml` beside `train/`) minus those every run shares, else by
    their folder."""
    import json
    from pathlib import Path

    import yaml

    files: list[Path] = []
    for p in map(Path, paths):
        found = sorted(p.rglob("train_report.json")) if p.is_dir() else [p]
        if not found or not all(f.is_file() for f in found):
            raise FileNotFoundError(f"{p}: no train_report.json there")
        files += found
    overrides = {}
    for f in files:
        hydra_file = f.parent.parent / ".hydra" / "overrides.yaml"
        overrides[f] = yaml.safe_load(hydra_file.read_text()) if hydra_file.is_file() else []
    swept = [set(o) for o in overrides.values() if o]
    shared = set.intersection(*swept) if len(swept) > 1 else set()
    runs = {}
    for f in files:
        label = " ".join(o for o in overrides[f] if o not in shared) or str(f.parent)
        runs[label] = json.loads(f.read_text())
    return runs


def print_side_by_side(summaries: dict[str, dict[str, Any]], title: str, console: Console | None = None) -> None:
    """Several evaluations of the same tasks side by side, per family then all: accuracy, $ per task and per
    correct answer, latency and tool mix (a comparison of policies and baselines, or the runs of a sweep)."""
    table = Table(title=title)
    for col in ("family", "policy", "accuracy", "$ / task", "$ / correct", "latency s", "tool calls / trajectory"):
        table.add_column(col, justify="left" if col in ("family", "policy", "tool calls / trajectory") else "right")
    families = sorted({f for s in summaries.values() for f in s["families"]})
    for family in [*families, "all"]:
        rows = [(label, s["overall"] if family == "all" else s["families"].get(family))
                for label, s in summaries.items()]
        rows = [(label, s) for label, s in rows if s is not None]
        for i, (label, s) in enumerate(rows):
            per_correct = f"{s['cost_usd'] / s['accuracy']:.6f}" if s["accuracy"] else "-"
            table.add_row(family if i == 0 else "", label, f"{s['accuracy']:.3f}", f"{s['cost_usd']:.6f}",
                          per_correct, f"{s['latency_s']:.2f}", _mix(s["tool_calls_per_trajectory"]),
                          end_section=i == len(rows) - 1)
    (console or Console(width=160)).print(table)


def print_runs(runs: dict[str, dict[str, Any]], console: Console | None = None) -> None:
    """The after-training evaluation of several runs side by side (e.g. a sweep over reward weights)."""
    console = console or Console(width=160)
    print_side_by_side({label: report["after"] for label, report in runs.items()}, "after training, per run",
                       console)
    for label, report in runs.items():
        if "train_s" in report:
            console.print(f"{label}: {report['steps']} steps ({report['mode']}) in {report['train_s']:.0f} s")
