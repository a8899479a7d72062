"""The driver: `orchestra-rl train`. Reads as the algorithm:

  warm start (SFT) → start rollout workers, tool executors, reward actor, learner group → evaluate →
  loop: sample tasks → rollouts → rewards → advantages → update → weight sync → log → checkpoint
  → evaluate again and compare.

train.mode=async overlaps the loop with itself: the rollouts of the next max_staleness steps are in flight while
a step trains (rollout/ahead.py); the loss's importance ratio is taken against the logprobs the tokens were
sampled with, so the older weights that sampled them are corrected for.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from orchestra_rl.checkpoint import (POLICY_DIR, checkpoint_dir, latest_checkpoint, load_trainer_state,
                                     save_trainer_state)
from orchestra_rl.config import Config
from orchestra_rl.data.sampler import TaskSampler
from orchestra_rl.eval.baselines import expand_baselines, run_baseline
from orchestra_rl.eval.report import print_comparison, print_routes, print_side_by_side, summarize
from orchestra_rl.eval.run import evaluate, select_tasks
from orchestra_rl.learner.samples import make_train_samples_task
from orchestra_rl.metrics import copying_tools
from orchestra_rl.models.tiny import resolve_model_path
from orchestra_rl.rollout.ahead import RolloutsAhead
from orchestra_rl.system import System
from orchestra_rl.tracking import Tracker
from orchestra_rl.types import Trajectory


def scored_eval(system: System, cfg: Config, desc: str) -> tuple[dict[str, Any], list[Trajectory]]:
    """Evaluation on the test split, scored with the reward being optimised (a group per task):
    (summary, scored trajectories)."""
    tasks = select_tasks(system, cfg.eval.split, cfg.train.eval_max_tasks)
    summary, trajectories = evaluate(system, tasks, eval_trials(cfg), desc)
    return add_rewards(system, cfg, summary, trajectories)


def eval_trials(cfg: Config) -> int:
    """Rollouts per task of the evaluations before, during and after training (train.eval_trials)."""
    return cfg.train.eval_trials or cfg.rollout.group_size


def add_rewards(system: System, cfg: Config, summary: dict[str, Any],
                trajectories: list[Trajectory]) -> tuple[dict[str, Any], list[Trajectory]]:
    """The summary with the mean reward overall and per family, and the scored trajectories."""
    tasks = {t.task_id: t for t in system.tasks(cfg.eval.split)}
    scored = ray.get(system.reward.score.remote(trajectories, tasks))
    return with_mean_rewards(summary, scored), scored


def with_mean_rewards(summary: dict[str, Any], scored: list[Trajectory]) -> dict[str, Any]:
    summary["overall"]["reward"] = sum(t.reward for t in scored) / len(scored)
    for family, s in summary["families"].items():
        group = [t.reward for t in scored if t.family == family]
        s["reward"] = sum(group) / len(group)
    return summary


def side_by_side(system: System, cfg: Config, policies: dict[str, list[Trajectory]]) -> dict[str, dict[str, Any]]:
    """The policies' evaluations (scored trajectories) beside the fixed baselines (train.baselines), on the
    evaluation's QA tasks (the families a baseline knows) with the same trials: {name: summary}, policies first.
    Empty when the evaluation has no QA task."""
    tasks = [t for t in select_tasks(system, cfg.eval.split, cfg.train.eval_max_tasks)
             if t.family in cfg.data.families]
    if not tasks:
        print("baselines skipped: the evaluation has no task of the QA world, the only one they know")
        return {}
    ids, copying = {t.task_id for t in tasks}, copying_tools(cfg.tools.tools)
    entries = {}
    for name, scored in policies.items():  # already scored: their QA part is summarised, not scored again
        qa = [t for t in scored if t.task_id in ids]
        entries[name] = with_mean_rewards(summarize(qa, tasks, system.tool_names, copying), qa)
    for name in expand_baselines(cfg, cfg.train.baselines):
        trajectories = run_baseline(cfg, system, tasks, name, eval_trials(cfg))
        entries[name] = add_rewards(system, cfg, summarize(trajectories, tasks, system.tool_names, copying),
                                    trajectories)[0]
    print_side_by_side(entries, f"the policy and the baselines on {len(tasks)} QA {cfg.eval.split} tasks x "
                                f"{eval_trials(cfg)} (seed {cfg.seed})")
    return entries


def warm_start(cfg: Config, run_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """The policy to start from: the latest checkpoint when resuming, else SFT of the configured model."""
    resume_from = latest_checkpoint(str(run_dir)) if cfg.train.resume else None
    if resume_from is not None:
        print(f"resuming from {resume_from}")
        return str(resume_from / POLICY_DIR), load_trainer_state(resume_from)
    if cfg.sft.enabled:
        from orchestra_rl.sft.train import run_sft

        return run_sft(cfg), None
    return resolve_model_path(cfg), None


def clear_previous_run(run_dir: Path) -> None:
    """A fresh run owns its folder: an earlier run's steps and checkpoints there would be mixed into its log and
    picked up by a later resume."""
    old = [p for p in (run_dir / "steps.jsonl", run_dir / "eval_before.json", run_dir / "checkpoints") if p.exists()]
    if old:
        print(f"fresh run (train.resume=false): removing the previous run's {' and '.join(p.name for p in old)} "
              f"in {run_dir}")
    (run_dir / "steps.jsonl").unlink(missing_ok=True)
    (run_dir / "eval_before.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def rewind_step_log(run_dir: Path, step: int) -> None:
    """A resumed run continues after checkpoint `step`: the interrupted run's records of later steps (trained by a
    policy lineage that is gone) are dropped, so that every step is in the log once."""
    log = run_dir / "steps.jsonl"
    if not log.exists():
        return
    kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = log.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(log)


def train(cfg: Config) -> dict[str, Any]:
    """Needs a running Ray (the CLI's `ray_session`)."""
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model_path, state = warm_start(cfg, run_dir)
    if state is None:
        clear_previous_run(run_dir)
    else:
        rewind_step_log(run_dir, state["step"])
    tracker = Tracker(cfg, str(run_dir), resume_id=state["wandb_id"] if state else None,
                      resume_step=state["step"] if state else None)
    # System stops every role it started on the way out, errors included (on an attached cluster nothing else would).
    with tracker, System(cfg, model_path, learners=True) as system:
        if state is not None:
            system.learners.load_checkpoint(str(latest_checkpoint(str(run_dir))))
        sampler = TaskSampler(system.tasks("train"), cfg.seed,
                              position=state["data_position"] if state else 0)
        before_file = run_dir / "eval_before.json"
        before_trajectories = []  # for the side by side; a resumed run has the summary only
        if state is not None and before_file.exists():  # evaluated and logged by the run this one resumes
            before = json.loads(before_file.read_text())
        else:
            before, before_trajectories = scored_eval(system, cfg, "eval before")
            tracker.log_eval(before, step=0)
            before_file.write_text(json.dumps(before))

        first = state["step"] if state else 0
        if first:
            system.rollout.set_policy_version(first)  # policy versions count steps (rollout/ahead.py)
        ahead = RolloutsAhead(system.rollout, sampler, cfg.train.tasks_per_step, cfg.rollout.group_size,
                              cfg.train.max_staleness if cfg.train.mode == "async" else 0, first, cfg.train.steps)
        bar = tqdm(range(first, cfg.train.steps), desc="train", unit="step", initial=first, total=cfg.train.steps)
        loop_start = time.perf_counter()
        with ahead:
            for step in bar:
                t0 = time.perf_counter()
                # Only object references and metrics pass through the driver; the tokens stay in the object store.
                tasks, rollouts, data_position = ahead.take(step, version=step)
                t1 = time.perf_counter()
                scored, metrics = system.reward.score_rollouts.options(num_returns=2).remote(
                    rollouts, tasks, system.tool_names)
                samples, sample_stats = make_train_samples_task.remote(scored, cfg.algo, step)
                metrics = ray.get(metrics) | ray.get(sample_stats)
                t2 = time.perf_counter()
                if metrics["samples/kept"]:  # else every group was degenerate: no update, and the engines are current
                    metrics |= {f"learner/{k}": v for k, v in system.learners.update(samples).items()}
                    metrics["time/update_s"] = time.perf_counter() - t2
                    metrics |= {f"sync/{k}": v for k, v in system.sync_weights(version=step + 1).items()}
                else:  # the weights of version step + 1 are step's
                    system.rollout.set_policy_version(step + 1)
                metrics |= {"time/rollout_s": t1 - t0, "time/reward_s": t2 - t1,
                            "rollout/lost_workers": system.rollout.lost_workers,
                            "perf/rollout_tokens_per_s": metrics["rollout/tokens"] / (t1 - t0)}
                tracker.log(metrics, step=step + 1)
                with open(run_dir / "steps.jsonl", "a") as log:  # a local record of every step, W&B or not
                    log.write(json.dumps({"step": step + 1, "task_ids": [t.task_id for t in tasks]} | metrics) + "\n")
                if step == first or (step + 1) % 10 == 0:
                    tracker.log_trajectories(ray.get(scored), step + 1, system.tokenizer)
                bar.set_postfix(reward=f"{metrics['rollout/reward']:.3f}",
                                outcome=f"{metrics.get('reward/outcome', 0.0):.3f}",
                                cost=f"{metrics['rollout/cost_usd']:.5f}")
                if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                    tracker.log_eval(scored_eval(system, cfg, f"eval at step {step + 1}")[0], step=step + 1)
                if cfg.train.save_every and ((step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps):
                    ckpt = checkpoint_dir(str(run_dir), step + 1)
                    system.learners.save_checkpoint(str(ckpt))
                    save_trainer_state(ckpt, step + 1, data_position, tracker.run_id)

        train_s = time.perf_counter() - loop_start
        after, after_trajectories = scored_eval(system, cfg, "eval after")
        tracker.log_eval(after, step=cfg.train.steps)
        print_comparison(before, after)
        print_routes(after["routes"], "routes after training: the first call per kind of question")
        compared = {}
        if cfg.train.baselines:
            policies = {"before": before_trajectories} if before_trajectories else {}
            compared = side_by_side(system, cfg, policies | {"after": after_trajectories})
    # train_s: the steps' wall time (this process's share of them, when resumed), evaluations excluded.
    report = {"before": before, "after": after, "side_by_side": compared, "seed": cfg.seed,
              "model_path": model_path, "train_s": train_s, "steps": cfg.train.steps - first, "mode": cfg.train.mode,
              "checkpoint": str(latest_checkpoint(str(run_dir)) or "")}
    (run_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    print(f"report: {run_dir / 'train_report.json'}")
    return report
