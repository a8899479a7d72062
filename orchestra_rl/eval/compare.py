"""Policies and baselines side by side, as the paper compares an orchestrator with monolithic models:

    orchestra-rl eval eval.compare='{sft: outputs/sft/hf, rl: outputs/train/.../hf}' \
        eval.baselines='[only:large_generalist, random, best]'

Every entry runs the same tasks (the split's, stratified by family, eval.max_tasks) with the same trials and
seeds, through the same tools and experts. The policies run one after the other on one System: each checkpoint
is loaded into the running engines when it has their model's shape and tokenizer (System.load_policy), else it
gets a System of its own. The baselines (eval/baselines.py) reuse the last System (without a policy: one with no
engine). With baselines, the tasks are the QA world's (the families they know). Written to eval.output_dir/<time>/: comparison.json
(per entry, per family and overall: accuracy, $ per task, $ per correct answer, latency, tool mix; and the
Pareto front), pareto.png (accuracy against $ per task), and each entry's report.json, tasks.json and
trajectories.jsonl in a folder of its name. The plot and the table also go to W&B unless
train.wandb_mode=disabled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestra_rl.config import Config, as_plain
from orchestra_rl.eval.baselines import expand_baselines, run_baseline
from orchestra_rl.eval.pareto import pareto_front, plot_pareto
from orchestra_rl.eval.report import print_side_by_side, summarize
from orchestra_rl.eval.run import evaluate, select_tasks, write_eval
from orchestra_rl.metrics import copying_tools
from orchestra_rl.models.tiny import resolve_model_path
from orchestra_rl.system import System
from orchestra_rl.types import Task


def run_comparison(cfg: Config) -> dict[str, Any]:
    e = cfg.eval
    out_dir = Path(e.output_dir) / time.strftime("%Y%m%d-%H%M%S")
    baselines = expand_baselines(cfg, e.baselines)
    families = cfg.data.families if baselines else None
    entries: dict[str, dict[str, Any]] = {}
    task_ids: dict[str, list[str]] = {}

    def record(name: str, kind: str, checkpoint: str | None, tasks: list[Task], trajectories, summary,
               wall_s: float) -> None:
        entries[name] = {"kind": kind, "checkpoint": checkpoint, "wall_time_s": wall_s, **summary}
        task_ids[name] = [t.task_id for t in tasks]
        write_eval(out_dir / name, {"name": name, "split": e.split, **entries[name]}, trajectories, tasks)

    system: System | None = None
    try:
        for name, path in e.compare.items():
            start = time.perf_counter()
            checkpoint = path or resolve_model_path(cfg)
            if system is not None and system.can_load(checkpoint) is None:
                system.load_policy(checkpoint)
                print(f"{name}: {checkpoint} loaded into the running engines")
            else:
                if system is not None:
                    system.close()
                system = System(cfg, checkpoint)
            tasks = select_tasks(system, e.split, e.max_tasks, families)
            summary, trajectories = evaluate(system, tasks, e.group_size, desc=name)
            record(name, "policy", system.model_path, tasks, trajectories, summary, time.perf_counter() - start)
        if baselines:
            system = system or System(cfg, rollout=False)
            tasks = select_tasks(system, e.split, e.max_tasks, families)
            for name in baselines:
                start = time.perf_counter()
                trajectories = run_baseline(cfg, system, tasks, name, e.group_size)
                summary = summarize(trajectories, tasks, system.tool_names, copying_tools(cfg.tools.tools))
                record(name, "baseline", None, tasks, trajectories, summary, time.perf_counter() - start)
    finally:
        if system is not None:
            system.close()
    if len({tuple(ids) for ids in task_ids.values()}) != 1:  # the comparison's premise, checked
        raise RuntimeError(f"the entries were evaluated on different tasks: {task_ids}")

    points = {name: (s["overall"]["cost_usd"], s["overall"]["accuracy"]) for name, s in entries.items()}
    front = pareto_front(points)
    policies = {name for name, s in entries.items() if s["kind"] == "policy"}
    title = f"accuracy vs $ per task ({e.split}, {len(next(iter(task_ids.values())))} tasks x {e.group_size})"
    png = plot_pareto(points, out_dir / "pareto.png", title, highlight=policies)
    comparison = {"split": e.split, "tasks": next(iter(task_ids.values())), "group_size": e.group_size,
                  "entries": entries, "pareto_front": front, "plot": str(png), "config": as_plain(cfg)}
    (out_dir / "comparison.json").write_text(json.dumps(comparison, indent=2))
    print_side_by_side(entries, f"policies and baselines on {e.split}", Console(width=160))
    print(f"Pareto front (cheapest first): {' < '.join(front)}")
    print(f"comparison: {out_dir / 'comparison.json'}\nplot: {png}")
    if cfg.train.wandb_mode != "disabled":
        log_to_wandb(cfg, out_dir, entries, png)
    comparison["output_dir"] = str(out_dir)
    return comparison


def log_to_wandb(cfg: Config, out_dir: Path, entries: dict[str, dict[str, Any]], png: Path) -> None:
    """One W&B run: the plot, and a table of the overall numbers per entry."""
    from orchestra_rl.tracking import Tracker

    with Tracker(cfg, str(out_dir)) as tracker:
        wandb = tracker.wandb
        table = wandb.Table(columns=["name", "kind", "accuracy", "cost_usd", "cost_per_correct_usd", "latency_s"])
        for name, s in entries.items():
            o = s["overall"]
            table.add_data(name, s["kind"], o["accuracy"], o["cost_usd"],
                           o["cost_usd"] / o["accuracy"] if o["accuracy"] else None, o["latency_s"])
        tracker.run.log({"eval/pareto": wandb.Image(str(png)), "eval/comparison": table})
