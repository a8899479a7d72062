"""`orchestra-rl sft`: warm-start the orchestrator on scripted demonstrations, with Ray Train.

A random-initialised policy never writes a tool call, so RL would have no signal. SFT first: demonstrations of
the scripted policy (sft/demos.py) are learnt with next-token cross-entropy on the policy's own tokens only
(loss_mask == 1; the prompt and tool responses are context). Ray Train's TorchTrainer runs one worker per
learner over torch.distributed (gloo on CPU, NCCL on GPU); the model is sharded with FSDP2 (learner/fsdp.py)
exactly as in RL. The result is an HF checkpoint that `model.path=...` loads for eval and RL.

Batches: each epoch shuffles the demonstrations (seeded), cuts them into batches of sft.batch_size (rounded
down to a multiple of the workers; the last, incomplete batch is dropped, a different one each epoch) and gives
each worker an equal slice, one sequence per forward pass. The loss is the mean over the whole batch's policy
tokens, so the gradient does not depend on the number of workers.
"""

from __future__ import annotations

import json
import math
import queue
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import ray

from orchestra_rl.config import Config, env_sources
from orchestra_rl.data.world import load_tasks
from orchestra_rl.models.tiny import PRETRAIN_FILE, resolve_model_path
from orchestra_rl.sft.after_search import after_search
from orchestra_rl.sft.after_search import describe as describe_after_search
from orchestra_rl.sft.demos import (demo_mix, environment_demos, generate_demos, tools_system,
                                    write_environment_demos)
from orchestra_rl.sft.probe import describe as describe_probe
from orchestra_rl.sft.probe import family_probe
from orchestra_rl.sft.replay import drill_accuracy, replay_samples

CHECKPOINT_DIR = "checkpoint"  # under sft.output_dir: the HF model directory
DEMOS_FILE = "demos.jsonl"
ENV_DEMOS_FILE = "env_demos.jsonl"  # the environments' golden replays (sft/demos.environment_demos)
METRICS_FILE = "metrics.jsonl"  # one row per epoch: epoch, loss (mean over the epoch's policy tokens), ...
DRILLS_FILE = "drills.json"  # the base's held-out drills before and after SFT (report_kept_skills)
# The family probe of the SFT policy at its first tool name (sft/probe.py), and its next call after a lookup's
# search ("after_search": sft/after_search.py).
PROBE_FILE = "probe.json"


def run_sft(cfg: Config) -> str:
    """Demonstrations, then supervised fine-tuning; returns the HF checkpoint directory. Needs a running Ray."""
    out_dir = Path(cfg.sft.output_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(cfg)
    start = time.perf_counter()
    demos: list = []
    qa = any(source.kind == "qa" for source in env_sources(cfg).values())
    with tools_system(cfg, model_path) as system:
        world_dir = system.world_dir
        if qa:
            demos = generate_demos(cfg, system, cfg.sft.num_demos, cfg.sft.only_correct,
                                   out_path=out_dir / DEMOS_FILE)
            mix = demo_mix(demos, load_tasks(world_dir, "train"), cfg.tools.enabled_of_kind("answer"))
            print(f"sft: {len(demos)} demonstrations in {time.perf_counter() - start:.0f} s -> {out_dir / DEMOS_FILE}")
            for family, m in mix.items():
                strategies = ", ".join(f"{s} {n}" for s, n in m["strategies"].items())
                print(f"  {family:<10} {m['demos']:>4} demos, {m['correct']:>4} correct | {strategies}")
            (out_dir / "demos_mix.json").write_text(json.dumps(mix, indent=1) + "\n")
        replays, replay_mix = environment_demos(cfg, system)
    if replay_mix:
        write_environment_demos(replays, out_dir / ENV_DEMOS_FILE)
        for name, m in replay_mix.items():
            print(f"sft: {name}: {m['demos']} of {m['replayed']} golden replays kept (graded 1.0 by the environment), "
                  f"x{cfg.sft.env_demo_repeats} -> {out_dir / ENV_DEMOS_FILE}")
    samples = [(d.token_ids, d.loss_mask) for d in demos + replays * cfg.sft.env_demo_repeats]
    if not samples:
        raise ValueError("sft: no demonstrations (no QA source, and no environment golden replay scored 1.0)")
    if cfg.sft.replay_drills:
        from transformers import AutoTokenizer

        drills = replay_samples(cfg, AutoTokenizer.from_pretrained(model_path), cfg.sft.replay_drills)
        samples += drills
        print(f"sft: + {len(drills)} drills of the base model's pretraining (sft.replay_drills)"
              + ("" if drills else ": none, the model has no tool words (model.word_tokens) to drill"))
    checkpoint = train_sft(cfg, model_path, samples, out_dir)
    pretrained = Path(model_path) / PRETRAIN_FILE
    if pretrained.is_file() and cfg.model.word_tokens:  # the drills are calls to the tool words
        report_kept_skills(cfg, json.loads(pretrained.read_text()), checkpoint, out_dir)
    if qa and cfg.model.word_tokens:  # the probe reads the tool names' tokens
        (out_dir / PROBE_FILE).write_text(json.dumps(probe_policy(cfg, checkpoint, world_dir), indent=1) + "\n")
    return checkpoint


def probe_policy(cfg: Config, model_path: str, world_dir: str | Path, prefix: str = "sft: ") -> dict[str, Any]:
    """Where the policy chooses its tools, over every QA task of the world: the family probe at its first tool name
    (sft/probe.py) and its next call behind a lookup's search ("after_search", sft/after_search.py), each printed.
    On this process's CPU, for a policy whose tool names are tokens (model.word_tokens): after SFT, and for any
    checkpoint through `orchestra-rl probe`."""
    tasks = load_tasks(world_dir, "train") + load_tasks(world_dir, "test")
    probe = family_probe(cfg, model_path, tasks)
    print(f"{prefix}{describe_probe(probe)}")
    probe["after_search"] = after_search(cfg, model_path, world_dir, tasks)
    if probe["after_search"]:
        print(f"{prefix}{describe_after_search(probe['after_search'])}")
    return probe


def report_kept_skills(cfg: Config, base: dict[str, Any], checkpoint: str, out_dir: Path) -> None:
    """The copy-pretrained base's held-out drills, re-judged after SFT (out_dir/drills.json): fine-tuning on a few
    hundred demonstrations can overwrite what pretraining taught (sft.replay_drills guards against it)."""
    after = drill_accuracy(cfg, checkpoint, base.get("held_out_drills", 256))
    kept = {kind: {"base": base.get(kind), "after_sft": value} for kind, value in after.items()}
    (out_dir / DRILLS_FILE).write_text(json.dumps(kept, indent=1) + "\n")
    print("sft: held-out drills written exactly, base -> after SFT: " + ", ".join(
        f"{kind.removesuffix('_accuracy')} {v['base']:.2f} -> {v['after_sft']:.2f}"
        for kind, v in kept.items() if v["base"] is not None))


def train_sft(cfg: Config, model_path: str, samples: list[tuple[list[int], list[int]]], out_dir: Path) -> str:
    """Fine-tune `model_path` on (token_ids, loss_mask) samples with Ray Train; the checkpoint is written to
    out_dir/checkpoint. Needs a running Ray."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue
    from tqdm import tqdm

    s, learner = cfg.sft, cfg.learner
    # Every worker must run as many forward passes as the others (FSDP2's collectives pair them up).
    batch_size = min(s.batch_size, len(samples)) // s.num_workers * s.num_workers
    if batch_size == 0:
        raise ValueError(f"sft.batch_size={s.batch_size} with {len(samples)} demonstrations cannot give each of "
                         f"sft.num_workers={s.num_workers} workers a demonstration per step")
    steps_per_epoch = len(samples) // batch_size
    progress = Queue(actor_options={"num_cpus": 0})  # rank 0 -> this console, whatever cluster.log_to_driver says
    use_gpu = learner.backend == "nccl"
    trainer = TorchTrainer(
        sft_worker_loop,
        train_loop_config={
            "model_path": model_path, "samples": samples, "lr": s.lr, "epochs": s.epochs,
            "batch_size": batch_size, "grad_clip": cfg.algo.grad_clip, "seed": learner.seed,
            "dtype": learner.dtype, "attn_implementation": learner.attn_implementation,
            "gradient_checkpointing": learner.gradient_checkpointing, "backend": learner.backend,
            "progress": progress,
        },
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": learner.num_cpus_per_learner,
                                  **({"GPU": learner.num_gpus_per_learner or 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend=learner.backend),
        run_config=RunConfig(name="sft", storage_path=str(out_dir / "ray_train")),
    )
    print(f"sft: {len(samples)} demonstrations, {s.epochs} epochs x {steps_per_epoch} steps of {batch_size}, "
          f"{s.num_workers} workers ({learner.backend}), lr {s.lr:g}")
    start = time.perf_counter()
    history: list[dict[str, Any]] = []  # per epoch
    with tqdm(total=s.epochs * steps_per_epoch, desc="sft", unit="step", dynamic_ncols=True) as bar:
        def show(event: dict[str, Any]) -> None:
            if event["kind"] == "step":
                bar.update(1)
                bar.set_postfix(epoch=event["epoch"], loss=f"{event['loss']:.3f}")
                return
            history.append({k: v for k, v in event.items() if k != "kind"} | {"elapsed_s": time.perf_counter() - start})
            bar.write(f"sft epoch {event['epoch']}/{s.epochs}: loss {event['loss']:.4f} "
                      f"({time.perf_counter() - start:.0f} s)")

        try:
            with ThreadPoolExecutor(1) as pool:
                fit = pool.submit(trainer.fit)
                while not fit.done():
                    try:
                        show(progress.get(timeout=0.5))
                    except queue.Empty:
                        pass
                while not progress.empty():  # what rank 0 sent just before the end
                    show(progress.get_nowait())
                result = fit.result()  # raises ray.train.TrainingFailedError if a worker failed
        finally:
            ray.kill(progress.actor)
            (out_dir / METRICS_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
    if result.checkpoint is None:
        raise RuntimeError("SFT training finished without a checkpoint")
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    result.checkpoint.to_directory(str(checkpoint_dir))
    print(f"sft: checkpoint {checkpoint_dir} ({time.perf_counter() - start:.0f} s of training)")
    return str(checkpoint_dir)


def sft_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: FSDP2-sharded model, masked next-token cross-entropy, AdamW."""
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint, get_context, report

    from orchestra_rl.learner.fsdp import device_for, full_state_dict, load_causal_lm, save_hf_checkpoint, shard

    context = get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])
    device = device_for(config["backend"])
    # fp32 master weights, config["dtype"] for compute (FSDP2 mixed precision), as in the RL learners.
    model = shard(load_causal_lm(config["model_path"], "float32", config["attn_implementation"],
                                 config["gradient_checkpointing"]), config["backend"], config["dtype"])
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.0)
    samples, batch_size = config["samples"], config["batch_size"]
    steps_per_epoch = len(samples) // batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, total_steps=config["epochs"] * steps_per_epoch))
    progress = config["progress"] if rank == 0 else None

    for epoch in range(1, config["epochs"] + 1):
        order = random.Random(f"sft/{config['seed']}/{epoch}").sample(range(len(samples)), len(samples))
        epoch_nll = epoch_tokens = 0.0
        for step in range(steps_per_epoch):
            batch = [samples[i] for i in order[step * batch_size:(step + 1) * batch_size]]
            # Targets are tokens 1..n; a target counts when the policy sampled it.
            batch_tokens = sum(sum(mask[1:]) for _, mask in batch)
            nll = torch.zeros((), device=device)
            for token_ids, loss_mask in batch[rank::world]:
                # One sequence per forward: no padding (padded SDPA was 3x slower here). FSDP2 averages
                # gradients over ranks: scaled so they sum to the gradient of the batch's token mean.
                sequence_nll = masked_nll_sum(model, token_ids, loss_mask, device)
                (sequence_nll * world / batch_tokens).backward()
                nll += sequence_nll.detach()
            if config["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total = nll.clone()
            if world > 1:
                dist.all_reduce(total)
            epoch_nll += total.item()
            epoch_tokens += batch_tokens
            if progress is not None:
                progress.put({"kind": "step", "epoch": epoch, "loss": total.item() / batch_tokens})
        metrics = {"epoch": epoch, "loss": epoch_nll / max(epoch_tokens, 1), "policy_tokens": epoch_tokens}
        if progress is not None:
            progress.put({"kind": "epoch", **metrics})
        if epoch < config["epochs"]:
            report(metrics)
            continue
        state = full_state_dict(model)  # collective: every rank takes part
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_hf_checkpoint(state, config["model_path"], f"{tmp}/model")
                checkpoint = Checkpoint.from_directory(f"{tmp}/model")
            report(metrics, checkpoint=checkpoint)


def lr_factor(step: int, total_steps: int) -> float:
    """Multiplier of sft.lr at `step`: linear warm-up over the first 5 % of the steps, then a cosine decay to
    10 % (a high peak learning rate learns the format fast; the decay lets the loss settle)."""
    warmup = max(1, round(0.05 * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def masked_nll_sum(model: Any, token_ids: list[int], loss_mask: list[int], device: Any) -> Any:
    """Σ −log p(token) over the loss-masked tokens of one sequence."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor([token_ids], device=device)
    weights = torch.tensor(loss_mask[1:], dtype=torch.float32, device=device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    return (F.cross_entropy(logits, ids[0, 1:], reduction="none") * weights).sum()
