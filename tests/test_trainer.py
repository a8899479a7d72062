"""End to end: `orchestra-rl train` (few steps, tiny sizes) for GRPO and PPO, checkpoints, and resume."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from orchestra_rl.checkpoint import POLICY_DIR
from orchestra_rl.data.sampler import TaskSampler
from orchestra_rl.envs.sources import load_tasks
from tests.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TASKS_PER_STEP = 4


def train(cache_dir: str, run_dir, policy: str, *overrides: str) -> subprocess.CompletedProcess:
    """`orchestra-rl train` from the session's SFT checkpoint (so the policy makes real tool calls and groups
    differ in reward), in a process and a Ray of its own."""
    cmd = [sys.executable, "-m", "orchestra_rl.cli", "train", f"model.cache_dir={cache_dir}/models",
           f"data.cache_dir={cache_dir}/worlds", "data.tasks_per_family=8", f"train.output_dir={run_dir}",
           f"model.path={policy}", "sft.enabled=false", f"train.tasks_per_step={TASKS_PER_STEP}",
           "rollout.group_size=4", "train.eval_max_tasks=5", "train.save_every=1", "rollout.max_turns=3",
           "train.wandb_mode=offline", f"serve.port={free_port()}", "serve.latency_scale=0.01",
           "learner.num_cpus_per_learner=0.5", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def steps(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def test_grpo_train_writes_loadable_checkpoints_and_resumes_in_data_order(cache_dir, tmp_path, sft_run):
    run_dir, policy = tmp_path / "grpo", sft_run[1]
    proc = train(cache_dir, run_dir, policy, "train.steps=2", "algo=grpo")
    assert "evaluation before → after training" in proc.stdout
    report = json.loads((run_dir / "train_report.json").read_text())
    # The default world: the QA families and the built-in function-call domain, each its own row.
    assert set(report["before"]["families"]) == set(report["after"]["families"]) == {
        "arithmetic", "lookup", "multihop", "hard", "orders"}
    logged = steps(run_dir)
    assert [s["step"] for s in logged] == [1, 2]
    for s in logged:
        assert s["rollout/policy_tokens"] > 0 and s["samples/failed_trajectories"] == s["rollout/failed"] == 0
        assert s["samples/kept"] + s["samples/dropped_trajectories"] == 16
        if s["samples/kept"]:  # an update on the kept groups, then the engines got the new weights
            assert s["learner/tokens"] > 0 and s["learner/grad_norm"] > 0 and s["sync/bytes"] > 0
        else:  # every group degenerate: no update, and no sync of unchanged weights
            assert not any(k.startswith(("learner/", "sync/")) for k in s)
    assert any(s["samples/kept"] for s in logged), "every group of both steps had equal rewards"
    # The SFT policy calls tools: the batch metrics see them (not only parse errors).
    assert sum(v for s in logged for k, v in s.items() if k.startswith("tools/")) > 0
    assert list((run_dir / "wandb").glob("offline-run-*"))

    ckpt = run_dir / "checkpoints" / "step_000002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data_position"] == 2 * TASKS_PER_STEP
    model = AutoModelForCausalLM.from_pretrained(ckpt / POLICY_DIR)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    train(cache_dir, run_dir, policy, "train.steps=3", "algo=grpo", "train.resume=true")
    logged = steps(run_dir)
    assert [s["step"] for s in logged] == [1, 2, 3]
    # The resumed step sees exactly the tasks an uninterrupted run would have: the stream continues at position 2 * TASKS_PER_STEP.
    expected = [[t.task_id for t in batch] for batch in _stream(cache_dir, 3)]
    assert [s["task_ids"] for s in logged] == expected
    assert json.loads((run_dir / "checkpoints" / "step_000003" / "trainer_state.json").read_text())["step"] == 3

    # A fresh run in the same folder starts its own log and checkpoints (a later resume must not find step 3).
    train(cache_dir, run_dir, policy, "train.steps=1", "algo=grpo")
    assert [s["step"] for s in steps(run_dir)] == [1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000001"]


def _stream(cache_dir: str, n_steps: int):
    from orchestra_rl.config import load_config
    from orchestra_rl.data.world import build_world

    cfg = load_config([f"data.cache_dir={cache_dir}/worlds", "data.tasks_per_family=8"])
    sampler = TaskSampler(load_tasks(cfg, build_world(cfg.data), "train"), cfg.seed)
    return [sampler.next(TASKS_PER_STEP) for _ in range(n_steps)]


def test_ppo_train_runs_with_a_critic(cache_dir, tmp_path, sft_run):
    """Also the collective weight sync in the driver loop (group formed at the first sync)."""
    run_dir = tmp_path / "ppo"
    train(cache_dir, run_dir, sft_run[1], "train.steps=1", "algo=ppo", "reward=absolute", "learner.weight_sync=collective")
    (logged,) = steps(run_dir)
    assert "learner/value_loss" in logged and logged["learner/tokens"] > 0
    assert logged["sync/bytes"] > 1e6  # the whole fp32 policy went through the broadcast
    assert (run_dir / "checkpoints" / "step_000001" / "learner" / "critic.safetensors").exists()
