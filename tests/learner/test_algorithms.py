"""Advantages, losses and KL estimators against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from orchestra_rl.learner.algorithms import (
    aggregate,
    degenerate_groups,
    entropy_from_logits,
    gae,
    grpo_advantages,
    kl_penalty,
    policy_loss,
    token_logprobs,
    value_loss,
)


def close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---------------------------------------------------------------- GRPO


def test_grpo_advantages_sample_std_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, 4.0])
    groups = ["a", "a", "a", "a", "b", "c", "c"]
    # a: mean .5, sample std sqrt(1/3) -> ±.5·sqrt(3);  b: alone -> 0;  c: mean 3, sample std sqrt(2) -> ∓1/sqrt(2)
    s3, s2 = math.sqrt(3) / 2, 1 / math.sqrt(2)
    close(grpo_advantages(rewards, groups), [s3, -s3, -s3, s3, 0.0, -s2, s2])
    close(grpo_advantages(rewards, groups, scale_by_std=False), [.5, -.5, -.5, .5, 0.0, -1.0, 1.0])


def test_grpo_advantages_accept_tensor_group_ids_and_equal_rewards_give_zero():
    adv = grpo_advantages(torch.tensor([3.0, 3.0, 1.0, 2.0]), torch.tensor([7, 7, 9, 9]))
    close(adv, [0.0, 0.0, -1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_degenerate_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0, 3.0])
    assert degenerate_groups(rewards, ["a", "a", "b", "b", "c", "c", "d"]) == {"a", "c", "d"}
    assert degenerate_groups(torch.tensor([0.0, 0.0]), torch.tensor([5, 5])) == {5}


# ---------------------------------------------------------------- GAE


def test_gae_skips_non_policy_positions():
    # Policy tokens at 1, 2, 4; position 3 is a tool response, 0 the prompt (their rewards/values are ignored).
    # γ = .9, λ = .5, γλ = .45.  t=4: δ = 1 + 0 − 3 = −2, A = −2
    # t=2: δ = 0 + .9·V4 − V2 = 2.7 − 2 = .7, A = .7 + .45·(−2) = −.2
    # t=1: δ = 0 + .9·V2 − V1 = 1.8 − 1 = .8, A = .8 + .45·(−.2) = .71
    rewards = torch.tensor([[5.0, 0.0, 0.0, 5.0, 1.0], [0.0] * 5])
    values = torch.tensor([[9.0, 1.0, 2.0, 9.0, 3.0], [1.0] * 5])
    mask = torch.tensor([[0, 1, 1, 0, 1], [0] * 5])  # the second row is padding

    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)

    close(adv, [[0.0, 0.71, -0.2, 0.0, -2.0], [0.0] * 5])
    close(ret, [[0.0, 1.71, 1.8, 0.0, 1.0], [0.0] * 5])


def test_gae_limits():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    # γ = λ = 1: Monte Carlo, returns are the reward-to-go and A = G − V.
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    close(ret, [[1.0, 1.0, 1.0]])
    close(adv, [[0.5, 0.8, 0.9]])
    # λ = 0: one-step TD errors r_t + γ·V_{t+1} − V_t.
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    close(adv, [[0.1 - 0.5, 0.05 - 0.2, 1.0 - 0.1]])


# ---------------------------------------------------------------- aggregation and policy loss


def test_aggregate_modes():
    x = torch.arange(1.0, 10.0).reshape(3, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last row is padding: not a sequence
    close(aggregate(x, mask, "token_mean"), (1 + 2 + 4) / 3)
    close(aggregate(x, mask, "seq_mean_token_sum"), ((1 + 2) + 4) / 2)
    close(aggregate(x, mask, "seq_mean_token_mean"), (1.5 + 4) / 2)
    close(aggregate(x, torch.zeros(3, 3), "token_mean"), 0.0)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate(x, mask, "mean")


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -4.0, 0.0]])

    loss, metrics = policy_loss(logprobs, logprobs.clone(), adv, mask, clip_low=0.2, clip_high=0.28)

    close(loss, -(1.0 - 2.0 + 0.5) / 3)
    close(metrics["clip_fraction"], 0.0)
    close(metrics["approx_kl"], 0.0)
    close(metrics["ratio_mean"], 1.0)
    close(metrics["ratio_max"], 1.0)


# Five tokens with clip range [.8, 1.28]:
#   A=+1 r=1.5 -> max(−1.5, −1.28) = −1.28 (clipped)     A=+1 r=.5 -> max(−.5, −.8) = −.5
#   A=−1 r=.5  -> max(.5, .8) = .8 (clipped)             A=−1 r=1.5 -> max(1.5, 1.28) = 1.5
#   A=−1 r=5   -> 5; with dual-clip c=3 capped at −c·A = 3
RATIOS = torch.tensor([[1.5, 0.5, 0.5, 1.5, 5.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0]])


@pytest.mark.parametrize("dual_clip, expected, grads", [
    (0.0, (-1.28 - 0.5 + 0.8 + 1.5 + 5.0) / 5, [0.0, -0.5 / 5, 0.0, 1.5 / 5, 5.0 / 5]),
    (3.0, (-1.28 - 0.5 + 0.8 + 1.5 + 3.0) / 5, [0.0, -0.5 / 5, 0.0, 1.5 / 5, 0.0]),
])
def test_policy_loss_clipping_and_gradients(dual_clip, expected, grads):
    logprobs = RATIOS.log().requires_grad_()

    loss, metrics = policy_loss(logprobs, torch.zeros(1, 5), ADVANTAGES, torch.ones(1, 5), clip_low=0.2,
                                clip_high=0.28, dual_clip=dual_clip)
    loss.backward()

    close(loss, expected)
    # d(−A·r)/d log p = −A·r where the unclipped term is taken; 0 where a clip holds the loss constant.
    # A positive advantage pushes its token's logprob up (negative gradient), a negative one down.
    close(logprobs.grad, [grads])
    close(metrics["clip_fraction"], 2 / 5)
    close(metrics["dual_clip_fraction"], 1 / 5 if dual_clip else 0.0)
    close(metrics["ratio_mean"], (1.5 + 0.5 + 0.5 + 1.5 + 5.0) / 5)
    close(metrics["ratio_max"], 5.0)
    r = RATIOS[0]
    close(metrics["approx_kl"], (r - 1 - r.log()).mean())


def test_policy_loss_masks_tokens_and_rejects_a_bad_dual_clip():
    mask = torch.tensor([[1, 1, 0, 0, 0]])
    loss, metrics = policy_loss(RATIOS.log(), torch.zeros(1, 5), ADVANTAGES, mask, 0.2, 0.28)
    close(loss, (-1.28 - 0.5) / 2)
    close(metrics["ratio_max"], 1.5)
    with pytest.raises(ValueError, match="dual_clip must be 0 \\(off\\) or > 1, got 0.5"):
        policy_loss(RATIOS.log(), torch.zeros(1, 5), ADVANTAGES, mask, 0.2, 0.28, dual_clip=0.5)


def test_policy_loss_seq_mean_token_mean():
    # Sequence 0 has one token (A=+2), sequence 1 three (A=+1 each); ratio 1: loss = −mean over sequences.
    adv = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    lp = torch.zeros(2, 3)
    loss, _ = policy_loss(lp, lp, adv, mask, 0.2, 0.2, loss_agg="seq_mean_token_mean")
    close(loss, -(2.0 + 1.0) / 2)
    loss, _ = policy_loss(lp, lp, adv, mask, 0.2, 0.2, loss_agg="token_mean")
    close(loss, -(2.0 + 3.0) / 4)


# ---------------------------------------------------------------- value loss and KL


def test_value_loss_clipped():
    # t0: V=1, V_old=.5 -> V_clip=.7; (1−2)²=1 < (.7−2)²=1.69: the clipped error is taken (no gradient).
    # t1: V=2, V_old=2.1 -> V_clip=2 (inside the range); both errors 1.   t2: masked out.
    values = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.1, 5.0]])
    returns = torch.tensor([[2.0, 1.0, 0.3]])

    loss, metrics = value_loss(values, old, returns, torch.tensor([[1, 1, 0]]), value_clip=0.2)
    loss.backward()

    close(loss, 0.5 * (1.69 + 1.0) / 2)
    close(values.grad, [[0.0, 0.5 * 2 * (2.0 - 1.0) / 2, 0.0]])
    close(metrics["value_clip_fraction"], 0.5)
    close(metrics["value_mean"], 1.5)
    close(metrics["return_mean"], 1.5)


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])  # log π − log π_ref = [.5, −1]
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    close(kl_penalty(logp, ref, "k2"), [0.125, 0.5])
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1 - 1])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(logp, ref, "k4")


def test_kl_estimators_are_unbiased_for_samples_of_the_policy():
    torch.manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    exact = (p * (p / q).log()).sum()
    tokens = torch.multinomial(p, 200_000, replacement=True)
    for estimator in ("k1", "k3"):
        estimate = kl_penalty(p.log()[tokens], q.log()[tokens], estimator).mean()
        close(estimate, exact, atol=0.01)
    assert (kl_penalty(p.log()[tokens], q.log()[tokens], "k3") >= 0).all()


# ---------------------------------------------------------------- from logits


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]])
    close(entropy_from_logits(logits), [math.log(4.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])


def test_token_logprobs_are_aligned_with_token_ids():
    # Position 0's logits predict token 1 (id 1, p = 3/5); position 1's predict token 2 (id 0, p = 1/2).
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0], [math.log(2.0), 0.0, 0.0], [9.0, 9.0, 9.0]]])
    ids = torch.tensor([[2, 1, 0]])
    close(token_logprobs(logits, ids), [[0.0, math.log(0.6), math.log(0.5)]])


def test_token_logprobs_match_log_softmax_in_float32():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    expected = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    close(token_logprobs(logits, ids)[:, 1:], expected)
    assert token_logprobs(logits.bfloat16(), ids).dtype == torch.float32


def test_gradient_flows_from_policy_loss_to_logits():
    # One positive-advantage token: the update raises its logit and lowers the others'.
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    ids = torch.tensor([[0, 2]])
    lp = token_logprobs(logits, ids)
    loss, _ = policy_loss(lp, lp.detach(), torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 1]]), 0.2, 0.28)
    loss.backward()
    grad = logits.grad[0, 0]
    assert grad[2] < 0 and grad[0] > 0 and grad[1] > 0
    close(grad, [1 / 3, 1 / 3, -2 / 3])  # −(onehot − softmax) with uniform softmax
    assert (logits.grad[0, 1] == 0).all()  # the last position's logits predict nothing
