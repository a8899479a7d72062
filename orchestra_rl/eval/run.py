"""`orchestra-rl eval`: run a policy over a task split through the full actor system and report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from orchestra_rl.config import Config, as_plain
from orchestra_rl.data.sampler import interleave_families
from orchestra_rl.eval.report import print_summary, summarize, task_results
from orchestra_rl.reward.outcome import solved
from orchestra_rl.system import System
from orchestra_rl.types import Trajectory


def evaluate(system: System, split: str, max_tasks: int, group_size: int,
             desc: str = "eval") -> tuple[dict[str, Any], list[Trajectory]]:
    """Roll out the split's tasks, `group_size` trials each, with the system's current policy; returns (summary,
    trajectories). With `max_tasks`, a subset in which every family is represented."""
    tasks = system.tasks(split)
    if max_tasks:
        tasks = interleave_families(tasks)[:max_tasks]
    by_id = {t.task_id: t for t in tasks}
    correct = 0
    with tqdm(total=len(tasks) * group_size, desc=desc, unit="traj", dynamic_ncols=True) as bar:
        def on_done(group: list[Trajectory]) -> None:
            nonlocal correct
            correct += sum(solved(t, by_id[t.task_id]) for t in group)
            bar.update(len(group))
            bar.set_postfix(accuracy=f"{correct / bar.n:.3f}")

        trajectories = system.rollout.rollout(tasks, group_size, on_done=on_done)
    return summarize(trajectories, tasks, system.tool_names), trajectories


def run_eval(cfg: Config) -> dict[str, Any]:
    start = time.perf_counter()
    with System(cfg) as system:
        summary, trajectories = evaluate(system, cfg.eval.split, cfg.eval.max_tasks, cfg.eval.group_size)
        model_path = system.model_path
        per_task = task_results(trajectories, system.tasks(cfg.eval.split))
    wall = time.perf_counter() - start
    out_dir = Path(cfg.eval.output_dir) / time.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"model_path": model_path, "split": cfg.eval.split, "wall_time_s": wall, **summary,
              "config": as_plain(cfg)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "tasks.json").write_text(json.dumps(per_task, indent=2))
    with open(out_dir / "trajectories.jsonl", "w") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_dict()) + "\n")
    print_summary(summary, title=f"eval of {model_path} on {cfg.eval.split} ({wall:.0f} s)")
    print(f"report: {out_dir / 'report.json'}")
    report["output_dir"] = str(out_dir)
    return report
