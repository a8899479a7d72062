"""The algorithm, as pure torch functions: advantages (GRPO, GAE), the clipped policy and value losses, KL.

Shapes: B sequences × T tokens, with `mask` 1 on policy tokens (what the orchestrator sampled) and 0 on
prompt, tool-response and padding tokens. Per-token tensors are aligned with the token ids: position i holds
the value for token i (see token_logprobs), as TrainSample.old_logprobs are.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import Tensor

LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
# exp() of a log-ratio beyond this overflows float32 soon after; far outside any clip range, so the clamp only
# bounds tokens whose loss is clipped already (or would be a NaN otherwise).
MAX_LOG_RATIO = 20.0


# ---------------------------------------------------------------- advantages


def _groups(group_ids: Sequence[Hashable] | Tensor) -> dict[Hashable, Tensor]:
    """Indices of the members of each group, in first-seen order."""
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(ids):
        members.setdefault(g, []).append(i)
    return {g: torch.tensor(idx) for g, idx in members.items()}


def grpo_advantages(rewards: Tensor, group_ids: Sequence[Hashable] | Tensor, scale_by_std: bool = True,
                    eps: float = 1e-6) -> Tensor:
    """A_i = (R_i − mean_g) / (std_g + eps) within each group g (the rollouts of one task).

    std is the sample standard deviation (Bessel-corrected, as TRL and veRL compute it), so a group of two with
    rewards 0 and 1 gets ±0.707. A one-member group has no baseline: its advantage is 0. scale_by_std=False
    gives the mean-only baseline (Dr. GRPO), which does not up-weight groups whose rewards barely differ.
    """
    advantages = torch.zeros_like(rewards)
    for idx in _groups(group_ids).values():
        if len(idx) < 2:
            continue
        r = rewards[idx]
        centred = r - r.mean()
        advantages[idx] = centred / (r.std() + eps) if scale_by_std else centred
    return advantages


def degenerate_groups(rewards: Tensor, group_ids: Sequence[Hashable] | Tensor) -> set[Hashable]:
    """Groups whose rewards are all exactly equal (one-member groups included): their advantages are all 0, so
    they only dilute the batch and can be dropped."""
    return {g for g, idx in _groups(group_ids).items() if bool((rewards[idx] == rewards[idx[0]]).all())}


@torch.no_grad()
def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over policy tokens only.

    The recursion runs backwards through each sequence and steps over mask-0 positions (tool responses, prompt,
    padding): the next *policy* token's value bootstraps the current one, as a tool response is part of the
    environment's transition, not an action. After the last policy token the episode ends (next value 0).
    Rewards on mask-0 positions are ignored. Returns (advantages, returns), both 0 where mask is 0.
    """
    mask = mask.bool()
    B, T = values.shape
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(B)
    running = values.new_zeros(B)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(m, delta + gamma * lam * running, running)
        next_value = torch.where(m, values[:, t], next_value)
        advantages[:, t] = torch.where(m, running, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


# ---------------------------------------------------------------- losses


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask-1 positions; 0 when there are none."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def aggregate(x: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce a per-token loss [B, T] to a scalar over policy tokens.

    token_mean: every policy token of the batch weighs the same (long trajectories weigh more).
    seq_mean_token_sum: sum over each sequence's tokens, mean over sequences (no length normalisation).
    seq_mean_token_mean: mean over each sequence's tokens, mean over sequences (each trajectory weighs the same).
    The seq_mean modes average over sequences with at least one policy token (padding rows do not count).
    """
    mask = mask.to(x.dtype)
    if mode == "token_mean":
        return masked_mean(x, mask)
    tokens = mask.sum(dim=-1)
    per_seq = (x * mask).sum(dim=-1)
    if mode == "seq_mean_token_mean":
        per_seq = per_seq / tokens.clamp(min=1)
    elif mode != "seq_mean_token_sum":
        raise ValueError(f"unknown loss aggregation {mode!r}; known: {', '.join(LOSS_AGGREGATIONS)}")
    has_tokens = (tokens > 0).to(x.dtype)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1)


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_low: float,
                clip_high: float, dual_clip: float = 0.0,
                loss_agg: str = "token_mean") -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate with an asymmetric clip range [1 − clip_low, 1 + clip_high] (a higher upper bound
    lets unlikely tokens with positive advantage grow: DAPO's clip-higher) and optional dual-clip: for
    negative advantages the loss is capped at −c·A (c > 1), so one token whose ratio exploded cannot dominate.

    `advantages` is per token [B, T] (broadcast a per-sequence GRPO advantage before calling). Metrics are
    detached 0-dim tensors (all-reduce them, or float() them): clip_fraction (tokens where the clipped term
    was taken), dual_clip_fraction, approx_kl (k3 estimate of KL(old ‖ new): mean of (r − 1) − log r),
    ratio_mean, ratio_max.
    """
    if dual_clip and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be 0 (off) or > 1, got {dual_clip}")
    log_ratio = (logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    is_dual_clipped = torch.zeros_like(is_clipped)
    if dual_clip:
        cap = -advantages * dual_clip
        is_dual_clipped = (advantages < 0) & (per_token > cap)
        per_token = torch.where(is_dual_clipped, cap, per_token)
    loss = aggregate(per_token, mask, loss_agg)
    with torch.no_grad():
        metrics = {
            "clip_fraction": masked_mean(is_clipped.float(), mask),
            "dual_clip_fraction": masked_mean(is_dual_clipped.float(), mask),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            # ratio > 0, so filling non-policy positions with 0 leaves the max over policy tokens (0 if none).
            "ratio_max": ratio.masked_fill(~mask.bool(), 0.0).max(),
        }
    return loss, metrics


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, value_clip: float,
               loss_agg: str = "token_mean") -> tuple[Tensor, dict[str, Tensor]]:
    """0.5 · max((V − G)², (V_clip − G)²) with V_clip = V_old + clamp(V − V_old, ±value_clip): the critic may
    not move its estimate further than value_clip from the one the advantages were computed with."""
    clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate(torch.maximum(unclipped_error, clipped_error), mask, loss_agg)
    with torch.no_grad():
        metrics = {
            "value_clip_fraction": masked_mean((clipped_error > unclipped_error).float(), mask),
            "value_mean": masked_mean(values, mask),
            "return_mean": masked_mean(returns, mask),
        }
    return loss, metrics


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled by π (Schulman's k1, k2, k3).

    k1 = log π − log π_ref (unbiased, high variance, can be negative); k2 = ½(log π − log π_ref)²;
    k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1 (unbiased, always ≥ 0, low variance).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        neg = (-log_ratio).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        return torch.exp(neg) - neg - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; known: k1, k2, k3")


# ---------------------------------------------------------------- from logits


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position: [..., V] -> [...]."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def token_logprobs(logits: Tensor, token_ids: Tensor) -> Tensor:
    """log p(token_i | tokens < i) aligned with token_ids: [B, T, V], [B, T] -> [B, T].

    `logits` are the model's outputs for the whole sequence: position i predicts token i + 1. The shift is done
    here, so output position i holds the logprob of token i; position 0 (nothing predicts it) is 0, and the
    last position's logits are unused. Computed in float32 whatever the logits' dtype. The caller divides the
    logits by the sampling temperature first if rollout logprobs were taken after temperature scaling.
    """
    logits = logits[:, :-1].float()
    targets = token_ids[:, 1:].unsqueeze(-1)
    shifted = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.cat([shifted.new_zeros(shifted.shape[0], 1), shifted], dim=1)
