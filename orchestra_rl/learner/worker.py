"""LearnerWorker: one data-parallel rank of the learner group (a Ray actor; a plain class too).

It owns an FSDP2 shard of the policy and its AdamW, a frozen reference policy when the KL coefficient is positive,
and for PPO a critic (the policy's architecture with a scalar head) with its own optimiser. All ranks call every
method together: the forward passes, gathers and the optimiser step are collectives over the process group.

Token alignment everywhere: position i of a [B, T] tensor belongs to token i — its logprob log p(token_i | <i),
its value V(<i) (the state in which the policy chose it), its advantage. Position 0 is never a policy token.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from orchestra_rl.checkpoint import POLICY_DIR
from orchestra_rl.config import Config
from orchestra_rl.learner import algorithms as algo_fns
from orchestra_rl.learner import fsdp
from orchestra_rl.learner.batching import MicroBatch, micro_batches, pack, split_across_ranks
from orchestra_rl.types import TrainSample
from orchestra_rl.weight_sync import CollectiveTransport, FileTransport, Metadata, engine_tensors

STATE_DIR = "learner"  # <checkpoint>/learner: optimiser states, critic, update count


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """[B, T] values computed at position t (having read tokens <= t) → aligned with token t+1; position 0 gets 0."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


class BatchMetrics:
    """Batch-level metrics from per-micro-batch ones: means weighted by each micro-batch's share of the batch
    (summed over ranks afterwards), and maxima (keys ending in _max) as maxima."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    @staticmethod
    def is_max(key: str) -> bool:
        return key.endswith("_max")

    def add(self, metrics: dict[str, torch.Tensor], share: float) -> None:
        for key, value in metrics.items():
            value = float(value)
            if self.is_max(key):
                self.values[key] = max(self.values.get(key, value), value)
            else:
                self.values[key] = self.values.get(key, 0.0) + value * share


class LearnerWorker:
    def __init__(self, cfg: Config, model_path: str, rank: int, world_size: int, master_addr: str,
                 master_port: int):
        lc, algo = cfg.learner, cfg.algo
        self.cfg, self.model_path, self.rank, self.world_size = cfg, model_path, rank, world_size
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size))
        dist.init_process_group(lc.backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
        torch.manual_seed(lc.seed)  # the same on every rank: a critic head is initialised before it is sharded
        self.device = fsdp.device_for(lc.backend)
        # fp32 master weights; learner.dtype is the compute dtype (fsdp.shard's MixedPrecisionPolicy).
        load = dict(dtype="float32", attn_implementation=lc.attn_implementation,
                    gradient_checkpointing=lc.gradient_checkpointing)

        self.policy = fsdp.shard(fsdp.load_causal_lm(model_path, **load), lc.backend, lc.dtype).train()
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=algo.lr, weight_decay=algo.weight_decay)
        self.pad_token_id = getattr(self.policy.config, "pad_token_id", None) or 0
        self.reference = None
        if algo.kl_coef > 0:
            reference = fsdp.load_causal_lm(model_path, attn_implementation=lc.attn_implementation)
            self.reference = fsdp.shard(reference.requires_grad_(False), lc.backend, lc.dtype).eval()
        self.critic = self.critic_optimizer = None
        if algo.name == "ppo":
            self.critic = fsdp.shard(fsdp.load_value_model(model_path, **load), lc.backend, lc.dtype).train()
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=algo.critic_lr,
                                                      weight_decay=algo.weight_decay)
        self.updates = 0

    def ready(self) -> bool:
        return True

    # ---- collectives over the process group ----

    def _all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world_size > 1:
            dist.all_reduce(t, op=op)
        return t.tolist()

    def _micro_batches(self, samples: list[TrainSample]) -> list[MicroBatch]:
        """This rank's micro-batches; every rank gets as many as the busiest one (FSDP collectives in lockstep)."""
        budget = self.cfg.algo.micro_batch_tokens
        count = int(self._all_reduce([len(pack(samples, budget))], dist.ReduceOp.MAX)[0])
        return [mb.to(self.device) for mb in micro_batches(samples, budget, count, self.pad_token_id)]

    # ---- forward passes ----

    def _logits(self, model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
        """The policy's (or reference's) logits of the distribution the rollout sampled from: divided by the
        sampling temperature, as the engine's processed logprobs are (top-p truncation is not reproduced)."""
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits.float()
        temperature = self.cfg.rollout.temperature
        return logits / temperature if temperature > 0 and temperature != 1.0 else logits

    def _values(self, mb: MicroBatch) -> torch.Tensor:
        """V(<i) at each token i: the critic's output after token i-1."""
        out = self.critic(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False).logits
        return shift_right(out[..., 0].float())

    # ---- training ----

    def _weight(self, mb: MicroBatch, totals: dict[str, float]) -> float:
        """Scale of a micro-batch's aggregated loss so that the sum over micro-batches and ranks is the loss of the
        whole batch: its share of the batch's tokens (token_mean) or sequences (seq_mean_*), times world size
        because FSDP averages gradients over ranks."""
        if self.cfg.algo.loss_agg == "token_mean":
            share = mb.num_tokens / max(totals["tokens"], 1.0)
        else:
            share = mb.num_sequences / max(totals["sequences"], 1.0)
        return share * self.world_size

    def _prepare(self, batches: list[MicroBatch]) -> list[dict[str, torch.Tensor]]:
        """What stays fixed over the epochs: reference logprobs (KL), and for PPO the old values, GAE advantages
        (whitened over the whole batch, all ranks) and returns."""
        algo = self.cfg.algo
        kl_in_reward = algo.name == "ppo" and algo.kl_in_reward
        fixed: list[dict[str, torch.Tensor]] = []
        with torch.no_grad():
            for mb in batches:
                f: dict[str, torch.Tensor] = {"advantages": mb.advantages}
                if self.reference is not None:
                    f["ref_logprobs"] = algo_fns.token_logprobs(self._logits(self.reference, mb), mb.input_ids)
                if self.critic is not None:
                    rewards = mb.token_rewards
                    if kl_in_reward and self.reference is not None:
                        kl = algo_fns.kl_penalty(mb.old_logprobs, f["ref_logprobs"], algo.kl_estimator)
                        rewards = rewards - algo.kl_coef * kl * mb.loss_mask
                    f["old_values"] = self._values(mb) * mb.loss_mask
                    f["advantages"], f["returns"] = algo_fns.gae(rewards, f["old_values"], mb.loss_mask,
                                                                 algo.gamma, algo.lam)
                fixed.append(f)
        if self.critic is not None:
            s, s2, n = self._all_reduce([
                sum(float((f["advantages"] * mb.loss_mask).sum()) for f, mb in zip(fixed, batches)),
                sum(float((f["advantages"] ** 2 * mb.loss_mask).sum()) for f, mb in zip(fixed, batches)),
                sum(mb.num_tokens for mb in batches)])
            mean = s / max(n, 1.0)
            std = max(s2 / max(n, 1.0) - mean ** 2, 0.0) ** 0.5
            for f, mb in zip(fixed, batches):
                f["advantages"] = (f["advantages"] - mean) / (std + 1e-8) * mb.loss_mask
        return fixed

    def _step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
        """Clip by the global gradient norm (over all shards) and step; a non-finite norm skips the step."""
        clip = self.cfg.algo.grad_clip if self.cfg.algo.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if torch.isfinite(torch.tensor(norm)):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def _train_policy(self, batches: list[MicroBatch], fixed: list[dict], totals: dict[str, float]) -> dict:
        algo = self.cfg.algo
        kl_in_loss = self.reference is not None and not (algo.name == "ppo" and algo.kl_in_reward)
        metrics = BatchMetrics()
        for mb, f in zip(batches, fixed):
            logits = self._logits(self.policy, mb)
            logprobs = algo_fns.token_logprobs(logits, mb.input_ids)
            if mb.num_tokens == 0:  # an empty micro-batch: zero gradients, but backward runs every collective
                (logprobs.sum() * 0.0).backward()
                continue
            loss, stats = algo_fns.policy_loss(logprobs, mb.old_logprobs, f["advantages"], mb.loss_mask,
                                               algo.clip_low, algo.clip_high, algo.dual_clip, algo.loss_agg)
            terms = {"pg_loss": loss.detach()}
            with torch.set_grad_enabled(algo.entropy_coef > 0):
                entropy = algo_fns.aggregate(shift_right(algo_fns.entropy_from_logits(logits)), mb.loss_mask,
                                             algo.loss_agg)
            terms["entropy"] = entropy.detach()
            if algo.entropy_coef > 0:
                loss = loss - algo.entropy_coef * entropy
            if self.reference is not None:
                kl = algo_fns.aggregate(algo_fns.kl_penalty(logprobs, f["ref_logprobs"], algo.kl_estimator),
                                        mb.loss_mask, algo.loss_agg)
                terms["kl"] = kl.detach()
                if kl_in_loss:
                    loss = loss + algo.kl_coef * kl
            terms["loss"] = loss.detach()
            weight = self._weight(mb, totals)
            (loss * weight).backward()
            metrics.add(terms, weight / self.world_size)
            metrics.add(stats, mb.num_tokens / max(totals["tokens"], 1.0))  # token means: weighted by tokens
        grad_norm = self._step(self.policy, self.optimizer)
        return self._reduce_metrics(metrics) | {"grad_norm": grad_norm}

    def _train_critic(self, batches: list[MicroBatch], fixed: list[dict], totals: dict[str, float]) -> dict:
        algo = self.cfg.algo
        metrics = BatchMetrics()
        for mb, f in zip(batches, fixed):
            values = self._values(mb)
            if mb.num_tokens == 0:
                (values.sum() * 0.0).backward()
                continue
            loss, stats = algo_fns.value_loss(values, f["old_values"], f["returns"], mb.loss_mask, algo.value_clip,
                                              algo.loss_agg)
            weight = self._weight(mb, totals)
            (loss * weight).backward()
            metrics.add({"value_loss": loss.detach()}, weight / self.world_size)
            metrics.add(stats, mb.num_tokens / max(totals["tokens"], 1.0))
        grad_norm = self._step(self.critic, self.critic_optimizer)
        return self._reduce_metrics(metrics) | {"critic_grad_norm": grad_norm}

    def _reduce_metrics(self, metrics: "BatchMetrics") -> dict[str, float]:
        """Combine every rank's share (identical result on every rank). Keys are agreed first: a rank with only
        empty micro-batches has none of its own."""
        keys = sorted(metrics.values)
        if self.world_size > 1:
            gathered: list[list[str]] = [[] for _ in range(self.world_size)]
            dist.all_gather_object(gathered, keys)
            keys = sorted({k for ks in gathered for k in ks})
        means = [k for k in keys if not BatchMetrics.is_max(k)]
        maxima = [k for k in keys if BatchMetrics.is_max(k)]
        return dict(zip(means, self._all_reduce([metrics.values.get(k, 0.0) for k in means]))) | \
            dict(zip(maxima, self._all_reduce([metrics.values.get(k, 0.0) for k in maxima], dist.ReduceOp.MAX)))

    def update(self, batch: list[TrainSample]) -> dict[str, float]:
        """algo.epochs passes over this rank's share of the batch, one optimiser step per pass (critic first for
        PPO). Returns metrics of the whole batch (identical on every rank), averaged over the epochs."""
        start = time.perf_counter()
        samples = [batch[i] for i in split_across_ranks(batch, self.world_size)[self.rank]]
        batches = self._micro_batches(samples)
        tokens, sequences = self._all_reduce([sum(mb.num_tokens for mb in batches),
                                              sum(mb.num_sequences for mb in batches)])
        totals = {"tokens": tokens, "sequences": sequences}
        fixed = self._prepare(batches)
        per_epoch: list[dict[str, float]] = []
        for _ in range(self.cfg.algo.epochs):
            metrics = self._train_critic(batches, fixed, totals) if self.critic is not None else {}
            per_epoch.append(metrics | self._train_policy(batches, fixed, totals))
        self.updates += 1
        metrics = {k: sum(m[k] for m in per_epoch) / len(per_epoch) for k in per_epoch[0]}
        return metrics | {"tokens": tokens, "sequences": sequences, "micro_batches": float(len(batches)),
                          "updates": float(self.updates), "step_time_s": time.perf_counter() - start}

    def logprobs(self, samples: list[TrainSample]) -> list[list[float]]:
        """log p(token_i | <i) under the current policy (at the sampling temperature) for every token of each
        sample (position 0: 0.0)."""
        out: list[list[float]] = [[] for _ in samples]
        with torch.no_grad():
            for mb in self._micro_batches(samples):
                logprobs = algo_fns.token_logprobs(self._logits(self.policy, mb), mb.input_ids).cpu()
                for row, i in enumerate(mb.indices):
                    out[i] = logprobs[row, :len(samples[i].token_ids)].tolist()
        return out

    # ---- weights out and in ----

    def open_weight_sync(self, host: str, world_size: int) -> int:
        """Rank 0: host the weight-sync group's store at `host`; returns its port (bound already)."""
        self.sync_store = CollectiveTransport.host_store(host, world_size)
        return self.sync_store.port

    def join_weight_sync(self, world_size: int) -> Metadata | None:
        """Collective transport: gather the policy (collective); rank 0 joins the weight-sync group it hosts (see
        open_weight_sync) as its rank 0 and returns what each sync will send, in order. Other ranks return None."""
        state = fsdp.full_state_dict(self.policy)
        if self.rank != 0:
            return None
        tensors = engine_tensors(state, self.cfg.model.dtype)
        self.sync_transport = CollectiveTransport(self.sync_store, 0, world_size, self.cfg.learner.backend)
        self.sync_metadata = CollectiveTransport.metadata(tensors)
        return self.sync_metadata

    def send_weights(self, path: str | None) -> int:
        """Gather the policy (collective); rank 0 sends it to the engines: written to `path` (file transport), or
        broadcast over the group of `join_weight_sync` (path None). Returns bytes sent (0 on other ranks)."""
        state = fsdp.full_state_dict(self.policy)
        if self.rank != 0:
            return 0
        tensors = engine_tensors(state, self.cfg.model.dtype)
        if path is not None:
            return FileTransport.send(tensors, path)
        return self.sync_transport.send(tensors, self.sync_metadata)

    def save_checkpoint(self, directory: str) -> None:
        """<directory>/policy: an HF model dir; <directory>/learner: optimiser states (unsharded, keyed by name, so
        they load into any number of ranks), the critic and the update count. Written to a temporary folder that
        replaces `directory` only when complete."""
        policy, policy_optim = fsdp.full_state_dict(self.policy), fsdp.full_optimizer_state(self.policy,
                                                                                             self.optimizer)
        if self.critic is not None:
            critic, critic_optim = fsdp.full_state_dict(self.critic), fsdp.full_optimizer_state(
                self.critic, self.critic_optimizer)
        if self.rank == 0:
            from safetensors.torch import save_file

            out = Path(directory)
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            fsdp.save_hf_checkpoint(policy, self.model_path, str(tmp / POLICY_DIR))
            state = tmp / STATE_DIR
            state.mkdir()
            torch.save(policy_optim, state / "policy_optimizer.pt")
            if self.critic is not None:
                save_file({k: v.contiguous() for k, v in critic.items()}, str(state / "critic.safetensors"))
                torch.save(critic_optim, state / "critic_optimizer.pt")
            (state / "state.json").write_text(json.dumps({"updates": self.updates, "algo": self.cfg.algo.name,
                                                          "world_size": self.world_size}))
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        dist.barrier()

    def _from_rank0(self, value):
        """Rank 0's value on every rank (only rank 0 reads files: the others may be on nodes without them)."""
        box = [value]
        if self.world_size > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def load_checkpoint(self, directory: str) -> None:
        """Resume from save_checkpoint's folder (collective; rank 0 reads, the others receive their shards)."""
        from safetensors.torch import load_file

        root = Path(directory)
        state = root / STATE_DIR
        lead = self.rank == 0
        problem = None
        if lead:
            needed = [root / POLICY_DIR / "model.safetensors", state / "policy_optimizer.pt", state / "state.json"]
            if self.critic is not None:
                needed += [state / "critic.safetensors", state / "critic_optimizer.pt"]
            missing = [str(p) for p in needed if not p.exists()]
            problem = f"checkpoint {directory} is incomplete or of another algorithm; missing: {', '.join(missing)}" \
                if missing else None
        problem = self._from_rank0(problem)
        if problem:  # raised on every rank, before any collective that the others would wait in forever
            raise FileNotFoundError(problem)
        fsdp.load_full_state_dict(self.policy, load_file(str(root / POLICY_DIR / "model.safetensors")) if lead else {})
        fsdp.load_full_optimizer_state(self.policy, self.optimizer,
                                       torch.load(state / "policy_optimizer.pt") if lead else {})
        if self.critic is not None:
            fsdp.load_full_state_dict(self.critic, load_file(str(state / "critic.safetensors")) if lead else {})
            fsdp.load_full_optimizer_state(self.critic, self.critic_optimizer,
                                           torch.load(state / "critic_optimizer.pt") if lead else {})
        self.updates = self._from_rank0(json.loads((state / "state.json").read_text())["updates"] if lead else 0)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
