"""End to end: `orchestra-rl eval` through Ray actors (vLLM rollout workers, tool executor, Ray Serve experts),
comparing two policies (the untrained tiny model and the session's SFT checkpoint) with two fixed baselines on the
same tasks and seeds: every entry's report checked against its trajectories and the world's gold answers, the
Pareto front against the points, the PNG and its W&B copy written."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from statistics import fmean

import pytest

from orchestra_rl.config import load_config
from orchestra_rl.data.world import build_world
from orchestra_rl.eval.pareto import pareto_front
from orchestra_rl.reward.outcome import is_correct
from tests.helpers import PRETRAIN, free_port

PYTHON_PRICE = 0.00001  # conf/tools/default.yaml


def check_report(report: dict, trajectories: list[dict], gold: dict[str, str]) -> None:
    """The summary is what the trajectories say: accuracy by the gold answers, mean $ per trajectory, tool mix."""
    assert len(trajectories) == report["overall"]["trajectories"] == 8
    assert report["overall"]["accuracy"] == pytest.approx(
        fmean(is_correct(t["final_answer"], gold[t["task_id"]], t["family"]) for t in trajectories))

    def cost(t):
        return sum(c["result"]["cost_usd"] for turn in t["turns"] for c in turn["calls"]) + t["policy_cost_usd"]

    assert report["overall"]["cost_usd"] == pytest.approx(fmean(cost(t) for t in trajectories))
    calls = [c for t in trajectories for turn in t["turns"] for c in turn["calls"]]
    assert sum(report["overall"]["tool_calls_per_trajectory"].values()) == pytest.approx(len(calls) / 8)
    assert report["overall"]["tool_errors"] == sum(1 for c in calls if c["result"]["error"])
    # The routes: every trajectory once, under its first call, in the kind of question its task asks.
    first = Counter(next((c["name"] for turn in t["turns"] for c in turn["calls"]), "no_call") for t in trajectories)
    routed = Counter()
    for kind, by_tool in report["routes"].items():
        assert kind.split("/")[0] in report["families"]
        assert sum(r["share"] for r in by_tool.values()) == pytest.approx(1)
        routed.update({name: r["trajectories"] for name, r in by_tool.items()})
    assert routed == first


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.timeout(1200)  # the first test to ask for the session's SFT checkpoint builds it (~5 min)
def test_eval_compares_policies_and_baselines_on_the_same_tasks(cache_dir, tmp_path, sft_run):
    out = tmp_path / "eval"
    _, sft_checkpoint = sft_run
    # The QA world alone (env=qa): the reports are checked against the world's gold answers.
    cmd = [sys.executable, "-m", "orchestra_rl.cli", "eval", "env=qa", f"model.cache_dir={cache_dir}/models", PRETRAIN,
           f"data.cache_dir={cache_dir}/worlds", "data.tasks_per_family=8", "eval.max_tasks=4", "eval.group_size=2",
           f"eval.output_dir={out}", f"serve.port={free_port()}", "serve.latency_scale=0.01", "rollout.max_turns=4",
           "rollout.constrained_tools=[python,search,math_expert,answer]", "+eval.compare.init=''",
           f"+eval.compare.sft={sft_checkpoint}", "eval.baselines=[only:large_generalist,best]",
           "train.wandb_mode=offline"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "policies and baselines on test" in proc.stdout and "$ / correct" in proc.stdout
    # One System for all: the SFT checkpoint (same model, same tokenizer) swapped into the init policy's engines.
    assert f"sft: {sft_checkpoint} loaded into the running engines" in proc.stdout

    (run_dir,) = list(out.iterdir())
    comparison = json.loads((run_dir / "comparison.json").read_text())
    entries = comparison["entries"]
    assert list(entries) == ["init", "sft", "only:large_generalist", "best"]
    assert [e["kind"] for e in entries.values()] == ["policy", "policy", "baseline", "baseline"]
    assert entries["sft"]["checkpoint"] == sft_checkpoint
    # Four tasks, one of each family (the subset is stratified), two trials each, the same for every entry.
    assert len(comparison["tasks"]) == 4 and comparison["group_size"] == 2

    world = Path(comparison["config"]["data"]["cache_dir"])
    world_dir = build_world(load_config([f"data.cache_dir={world}", "data.tasks_per_family=8"]).data)
    gold = {json.loads(line)["task_id"]: json.loads(line)["answer"]
            for line in (world_dir / "test.jsonl").read_text().splitlines()}
    trajectories = {}
    for name, entry in entries.items():
        report = json.loads((run_dir / name / "report.json").read_text())
        trajectories[name] = [json.loads(line) for line in (run_dir / name / "trajectories.jsonl").read_text()
                              .splitlines()]
        assert report["overall"] == entry["overall"]
        assert set(report["families"]) == {"arithmetic", "lookup", "multihop", "hard"}
        assert sorted({t["task_id"] for t in trajectories[name]}) == sorted(comparison["tasks"])
        check_report(report, trajectories[name], gold)

    # The policies decode constrained tool calls only; the baselines are rules: no tokens paid, their calls fixed.
    assert all(entries[p]["overall"]["parse_errors"] == 0 for p in ("init", "sft"))
    always_large = trajectories["only:large_generalist"]
    assert all([c["name"] for turn in t["turns"] for c in turn["calls"]] == ["large_generalist"]
               and t["policy_cost_usd"] == 0 for t in always_large)
    best = entries["best"]["families"]
    # The local strategies are exact (python; search; search, search, python), each call at its flat price.
    assert best["arithmetic"]["accuracy"] == best["lookup"]["accuracy"] == best["multihop"]["accuracy"] == 1.0
    assert best["arithmetic"]["cost_usd"] == pytest.approx(PYTHON_PRICE)
    assert best["hard"]["tool_calls_per_trajectory"] == {"large_generalist": 1.0}
    assert entries["best"]["overall"]["cost_usd"] < entries["only:large_generalist"]["overall"]["cost_usd"] / 2

    points = {n: (e["overall"]["cost_usd"], e["overall"]["accuracy"]) for n, e in entries.items()}
    assert comparison["pareto_front"] == pareto_front(points)
    for name, (cost, accuracy) in points.items():  # off the front: some point on it is as good for less
        assert name in comparison["pareto_front"] or any(
            points[f][0] <= cost and points[f][1] >= accuracy for f in comparison["pareto_front"])
    png = (run_dir / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    (logged,) = list((run_dir / "wandb").glob("offline-run-*/files/media/images/eval/pareto_*.png"))
    assert logged.read_bytes().startswith(b"\x89PNG")
