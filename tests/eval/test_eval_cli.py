"""End to end: `orchestra-rl eval` through Ray actors (vLLM rollout worker, tool executor, Ray Serve experts)."""

import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import pytest

from orchestra_rl.config import load_config
from orchestra_rl.data.world import build_world
from orchestra_rl.reward.outcome import is_correct
from tests.helpers import free_port


@pytest.mark.integration
@pytest.mark.e2e
def test_eval_writes_a_consistent_report(cache_dir, tmp_path):
    out = tmp_path / "eval"
    # The QA world alone (env=qa): its report is checked against the world's gold answers.
    cmd = [sys.executable, "-m", "orchestra_rl.cli", "eval", "env=qa", f"model.cache_dir={cache_dir}/models",
           f"data.cache_dir={cache_dir}/worlds", "data.tasks_per_family=8", "eval.max_tasks=4", "eval.group_size=2",
           f"eval.output_dir={out}", f"serve.port={free_port()}", "serve.latency_scale=0.01", "rollout.max_turns=3",
           "rollout.constrained_tools=[python,search,math_expert,answer]"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout and "report:" in proc.stdout

    (run_dir,) = list(out.iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    trajectories = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    world = Path(report["config"]["data"]["cache_dir"])
    assert world.is_dir()
    assert len(trajectories) == report["overall"]["trajectories"] == 8
    # Four tasks, one of each family (the subset is stratified).
    assert set(report["families"]) == {"arithmetic", "lookup", "multihop", "hard"}

    # This run's QA world folder (the session's cache holds other worlds and the orders domain too): the one the
    # same data overrides build, which already exists.
    world_dir = build_world(load_config([f"data.cache_dir={world}", "data.tasks_per_family=8"]).data)
    assert (world_dir / "manifest.json").stat().st_mtime < (run_dir / "report.json").stat().st_mtime
    gold = {json.loads(line)["task_id"]: json.loads(line)["answer"]
            for line in (world_dir / "test.jsonl").read_text().splitlines()}
    assert report["overall"]["accuracy"] == pytest.approx(
        fmean(is_correct(t["final_answer"], gold[t["task_id"]], t["family"]) for t in trajectories))

    def cost(t):
        return sum(c["result"]["cost_usd"] for turn in t["turns"] for c in turn["calls"]) + t["policy_cost_usd"]

    assert report["overall"]["cost_usd"] == pytest.approx(fmean(cost(t) for t in trajectories))
    assert report["overall"]["cost_usd"] > 0
    calls = [c for t in trajectories for turn in t["turns"] for c in turn["calls"]]
    assert sum(report["overall"]["tool_calls_per_trajectory"].values()) == pytest.approx(len(calls) / 8)
    assert report["overall"]["tool_errors"] == sum(1 for c in calls if c["result"]["error"])
    assert report["overall"]["parse_errors"] == 0  # constrained decoding: every turn is a well-formed call

    # Per task: two trials each, their successes behind pass^1 and pass^2.
    per_task = json.loads((run_dir / "tasks.json").read_text())
    assert sorted(r["task_id"] for r in per_task) == sorted({t["task_id"] for t in trajectories})
    assert all(r["trials"] == 2 for r in per_task)
    assert report["overall"]["pass^1"] == pytest.approx(fmean(r["successes"] / 2 for r in per_task))
    assert report["overall"]["pass^2"] == pytest.approx(fmean(r["successes"] == 2 for r in per_task))
