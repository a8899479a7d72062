"""`orchestra-rl bench step`: a GRPO step of this system and of TRL's GRPOTrainer on one workload, side by side."""

import json

import pytest

from orchestra_rl.bench.step import digit_share, run_step_bench
from tests.helpers import free_port

pytestmark = pytest.mark.integration


def test_bench_step_times_both_systems_on_the_same_workload(make_config, ray_local, tmp_path):
    cfg = make_config("tools.tools.python.enabled=false", f"serve.port={free_port()}", "serve.latency_scale=0.01",
                      "learner.num_learners=2", "learner.num_cpus_per_learner=0.25", "bench.step_prompts=2",
                      "bench.step_max_tokens=16", "bench.step_steps=2", f"bench.output_dir={tmp_path}")
    report = run_step_bench(cfg)
    ours, trl = report["runs"]["orchestra_rl"], report["runs"]["trl"]
    for r in (ours, trl):  # 2 prompts x 4 samples of at most 16 tokens, 2 measured steps after the warm-up
        assert len(r["steps"]) == 2 and all(s > 0 for s in r["steps"])
        assert 0 < r["completion_tokens"] <= 2 * 4 * 16
    assert 0 < ours["generation_s"] < ours["step_s"] and ours["sync_s"] > 0
    # fp32 on both sides: after the last sync the engine scores the sampled tokens as the learners do.
    assert ours["logprob_max_diff"] < 1e-3
    assert report["ours_over_trl"] == pytest.approx(ours["step_s"] / trl["step_s"])
    (saved,) = tmp_path.glob("step-*.json")
    assert json.loads(saved.read_text())["workload"]["group_size"] == 4


def test_the_shared_reward_is_the_share_of_digits():
    assert digit_share("a1b2") == 0.5 and digit_share("") == 0.0
