"""`orchestra-rl bench step`: one GRPO step (generation + update) of this system against TRL's GRPOTrainer.

The same workload for both, side by side in one run: the configured policy (the tiny model by default), the first
`bench.step_prompts` training questions rendered with its chat template, `rollout.group_size` samples of each of
at most `bench.step_max_tokens` tokens at the configured temperature/top-p, the same dtype and learning rate, no KL,
single-turn without tools, rewarded by one deterministic function of the completion (its share of digits). Each
side runs `bench.step_steps` steps after a warm-up step; medians are compared. Goal: ours <= 0.5x TRL's time.

- ours: the rollout workers' vLLM engines sample (`RolloutWorker.generate`), GRPO advantages, the FSDP2 learner
  group updates, the weights are synced into the engines: the path `orchestra-rl train` runs, minus the tools.
- TRL: `GRPOTrainer` as a user would start it on this machine (transformers generation, one process); TRL is the
  `bench` extra (`pip install -e ".[bench]"`), not a requirement of the package.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import ray
import torch
from rich.console import Console
from rich.table import Table

from orchestra_rl.bench import save_report
from orchestra_rl.config import Config
from orchestra_rl.envs.sources import load_tasks
from orchestra_rl.learner.algorithms import grpo_advantages
from orchestra_rl.models.tiny import resolve_model_path
from orchestra_rl.rollout.engine import Generation
from orchestra_rl.system import System
from orchestra_rl.types import TrainSample

TARGET_RATIO = 0.5


def digit_share(text: str) -> float:
    """The reward of both sides: it varies between samples, so every group has a GRPO signal."""
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def prompts_of(cfg: Config, tokenizer, n: int) -> list[str]:
    from orchestra_rl.data.world import build_world

    tasks = load_tasks(cfg, build_world(cfg.data), "train")[:n]
    return [tokenizer.apply_chat_template([{"role": "user", "content": t.question}], tokenize=False,
                                          add_generation_prompt=True) for t in tasks]


def grpo_samples(prompt_ids: list[list[int]], groups: list[list[Generation]], scale_by_std: bool) -> list[TrainSample]:
    gens = [(p, g) for p, group in zip(prompt_ids, groups) for g in group]
    rewards = torch.tensor([digit_share(g.text) for _, g in gens], dtype=torch.float64)
    advantages = grpo_advantages(rewards, [i for i, group in enumerate(groups) for _ in group], scale_by_std)
    return [TrainSample(token_ids=p + g.token_ids, loss_mask=[0] * len(p) + [1] * len(g.token_ids),
                        old_logprobs=[0.0] * len(p) + g.logprobs, advantage=float(a))
            for (p, g), a in zip(gens, advantages)]


def run_ours(cfg: Config, prompts: list[str]) -> dict[str, Any]:
    b, group_size = cfg.bench, cfg.rollout.group_size
    times, generation_s, tokens = [], [], []
    with System(cfg, learners=True) as system:
        prompt_ids = [system.tokenizer(p)["input_ids"] for p in prompts]
        workers = system.rollout.workers
        shares = [list(range(len(prompts)))[w::len(workers)] for w in range(len(workers))]  # prompt indices
        for step in range(b.step_steps + 1):  # step 0 warms up (compilation, caches)
            start = time.perf_counter()
            calls = [(share, worker.generate.remote([prompt_ids[i] for i in share], group_size, b.step_max_tokens))
                     for worker, share in zip(workers, shares) if share]
            groups: list[list[Generation]] = [[] for _ in prompts]
            for share, call in calls:
                for i, group in zip(share, ray.get(call)):
                    groups[i] = group
            generated = time.perf_counter()
            samples = grpo_samples(prompt_ids, groups, cfg.algo.scale_by_std)
            system.learners.update(samples)
            sync_s = system.sync_weights(version=step + 1)["seconds"]
            if step:
                times.append(time.perf_counter() - start)
                generation_s.append(generated - start)
                tokens.append(sum(len(g.token_ids) for group in groups for g in group))
        # After the last sync the engine must score a sequence as the learners do (the check that the weights
        # arrived whole), on the policy tokens of the last step's first sample.
        probe = samples[0]
        learner = system.learners.logprobs([probe])[0]
        engine = ray.get(workers[0].prompt_logprobs.remote(probe.token_ids))
        diff = max(abs(learner[i] - engine[i - 1]) for i, m in enumerate(probe.loss_mask) if m)
    return {"step_s": statistics.median(times), "generation_s": statistics.median(generation_s),
            "sync_s": sync_s, "completion_tokens": statistics.median(tokens), "logprob_max_diff": diff,
            "steps": times}


def run_trl(cfg: Config, model_path: str, prompts: list[str]) -> dict[str, Any]:
    try:
        from datasets import Dataset
        from transformers import AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"bench step compares with TRL, which is not installed ({e}): pip install -e \".[bench]\"")

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    b, a, group_size = cfg.bench, cfg.algo, cfg.rollout.group_size
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    timer = StepTimes()
    with tempfile.TemporaryDirectory(prefix="bench-step-trl-") as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=not torch.cuda.is_available(), bf16=cfg.model.dtype == "bfloat16",
            model_init_kwargs={"dtype": getattr(torch, cfg.model.dtype)}, seed=cfg.seed,
            per_device_train_batch_size=len(prompts) * group_size, num_generations=group_size,
            max_completion_length=b.step_max_tokens, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            learning_rate=a.lr, beta=0.0, epsilon=a.clip_low, epsilon_high=a.clip_high, max_grad_norm=a.grad_clip,
            max_steps=b.step_steps + 1, shuffle_dataset=False, logging_steps=1, report_to="none",
            save_strategy="no", disable_tqdm=True)
        # The same prompts every step, as ours: each step's batch is the dataset's next len(prompts) rows.
        dataset = Dataset.from_dict({"prompt": prompts * (b.step_steps + 1)})
        trainer = GRPOTrainer(model=model_path, reward_funcs=lambda completions, **_: [digit_share(c)
                                                                                       for c in completions],
                              args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    times = timer.times[1:]
    return {"step_s": statistics.median(times), "completion_tokens": statistics.median(lengths[1:]) *
            len(prompts) * group_size, "steps": times}


def run_step_bench(cfg: Config) -> dict[str, Any]:
    from transformers import AutoTokenizer

    b = cfg.bench
    model_path = resolve_model_path(cfg)
    prompts = prompts_of(cfg, AutoTokenizer.from_pretrained(model_path), b.step_prompts)
    results = {"orchestra_rl": run_ours(cfg, prompts), "trl": run_trl(cfg, model_path, prompts)}
    ratio = results["orchestra_rl"]["step_s"] / results["trl"]["step_s"]
    table = Table(title=f"step bench: {len(prompts)} prompts x {cfg.rollout.group_size} samples of <= "
                        f"{b.step_max_tokens} tokens, {cfg.model.dtype}, median of {b.step_steps} steps")
    for col in ("system", "step s", "completion tokens / step", "tokens / s"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['step_s']:.2f}", f"{r['completion_tokens']:.0f}",
                      f"{r['completion_tokens'] / r['step_s']:.0f}")
    console = Console(width=160)
    console.print(table)
    ours = results["orchestra_rl"]
    console.print(f"orchestra_rl: generation {ours['generation_s']:.2f} s of the step, last weight sync "
                  f"{ours['sync_s']:.3f} s; engine vs learner logprobs after it: max |diff| {ours['logprob_max_diff']:.2e}")
    console.print(f"orchestra_rl / TRL time per step: {ratio:.2f}x (goal <= {TARGET_RATIO}x)")
    report = {"runs": results, "ours_over_trl": ratio,
              "workload": {"prompts": len(prompts), "group_size": cfg.rollout.group_size,
                           "max_tokens": b.step_max_tokens, "dtype": cfg.model.dtype, "lr": cfg.algo.lr,
                           "learners": cfg.learner.num_learners, "rollout_workers": cfg.rollout.num_workers}}
    save_report(b.output_dir, "step", report, console)
    return report
