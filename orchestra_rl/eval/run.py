"""`orchestra-rl eval`: run a policy over a task split through the full actor system and report (several
policies and baselines side by side: eval/compare.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from tqdm import tqdm

from orchestra_rl.config import Config, as_plain
from orchestra_rl.data.sampler import interleave_families
from orchestra_rl.eval.report import print_routes, print_summary, summarize, task_results
from orchestra_rl.metrics import copying_tools
from orchestra_rl.reward.outcome import solved
from orchestra_rl.system import System
from orchestra_rl.types import Task, Trajectory


def select_tasks(system: System, split: str, max_tasks: int, families: Collection[str] | None = None) -> list[Task]:
    """The split's tasks (of `families` only, if given); with `max_tasks`, a subset in which every family is
    represented. The same config selects the same tasks."""
    tasks = [t for t in system.tasks(split) if families is None or t.family in families]
    return interleave_families(tasks)[:max_tasks] if max_tasks else tasks


def evaluate(system: System, tasks: list[Task], group_size: int,
             desc: str = "eval") -> tuple[dict[str, Any], list[Trajectory]]:
    """Roll out `tasks` (select_tasks picks them from a split), `group_size` trials each, with the system's
    current policy; returns (summary, trajectories)."""
    by_id = {t.task_id: t for t in tasks}
    correct = 0
    with tqdm(total=len(tasks) * group_size, desc=desc, unit="traj", dynamic_ncols=True) as bar:
        def on_done(group: list[Trajectory]) -> None:
            nonlocal correct
            correct += sum(solved(t, by_id[t.task_id]) for t in group)
            bar.update(len(group))
            bar.set_postfix(accuracy=f"{correct / bar.n:.3f}")

        trajectories = system.rollout.rollout(tasks, group_size, on_done=on_done)
    return summarize(trajectories, tasks, system.tool_names, copying_tools(system.cfg.tools.tools)), trajectories


def write_eval(out_dir: Path, report: dict[str, Any], trajectories: list[Trajectory], tasks: list[Task]) -> None:
    """An evaluation's files: report.json, tasks.json (per task over its trials), trajectories.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "tasks.json").write_text(json.dumps(task_results(trajectories, tasks), indent=2))
    with open(out_dir / "trajectories.jsonl", "w") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict()) + "\n")


def run_eval(cfg: Config) -> dict[str, Any]:
    if cfg.eval.compare or cfg.eval.baselines:
        from orchestra_rl.eval.compare import run_comparison

        return run_comparison(cfg)
    start = time.perf_counter()
    with System(cfg) as system:
        tasks = select_tasks(system, cfg.eval.split, cfg.eval.max_tasks)
        summary, trajectories = evaluate(system, tasks, cfg.eval.group_size)
        model_path = system.model_path
    wall = time.perf_counter() - start
    out_dir = Path(cfg.eval.output_dir) / time.strftime("%Y%m%d-%H%M%S")
    report = {"model_path": model_path, "split": cfg.eval.split, "wall_time_s": wall, **summary,
              "config": as_plain(cfg)}
    write_eval(out_dir, report, trajectories, tasks)
    print_summary(summary, title=f"eval of {model_path} on {cfg.eval.split} ({wall:.0f} s)")
    print_routes(summary["routes"], title="routes: the first call per kind of question")
    print(f"report: {out_dir / 'report.json'}")
    report["output_dir"] = str(out_dir)
    return report
