"""LearnerGroup over real Ray actors, gloo and FSDP2: N learners compute the update of one; PPO trains its critic;
a checkpoint resumes exactly."""

import contextlib
import dataclasses
import math
import socket
import time

import pytest
import ray
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from orchestra_rl.checkpoint import POLICY_DIR
from orchestra_rl.learner.group import LearnerGroup
from orchestra_rl.types import TrainSample

pytestmark = pytest.mark.integration

# Lengths and budget chosen so that with 2 learners the ranks pack different numbers of micro-batches
# (rank 0: [96] and [32]; rank 1: [40, 36]): rank 1 must run an empty one, or FSDP's collectives hang.
LENGTHS = [96, 40, 36, 32]
BUDGET = 80


def make_group(make_config, model_path: str, num_learners: int, *overrides: str) -> LearnerGroup:
    cfg = make_config(f"learner.num_learners={num_learners}", "learner.num_cpus_per_learner=0.25",
                      f"algo.micro_batch_tokens={BUDGET}", "algo.lr=1e-3", *overrides)
    return LearnerGroup(cfg, model_path)


@pytest.fixture(scope="module")
def samples(tiny_model_path) -> list[TrainSample]:
    """Random tokens with several policy segments each, random advantages, and the model's own logprobs as the
    behaviour logprobs (so every importance ratio starts at 1)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(0, model.config.vocab_size, (n,), generator=g)
        mask = torch.zeros(n, dtype=torch.long)
        for start in range(8, n - 4, 16):  # segments of 6 policy tokens separated by context tokens
            mask[start:start + 6] = 1
        with torch.no_grad():
            logp = model(ids[None]).logits[0, :-1].log_softmax(-1).gather(-1, ids[1:, None])[:, 0]
        logp = torch.cat([torch.zeros(1), logp]) * mask
        out.append(TrainSample(token_ids=ids.tolist(), loss_mask=mask.tolist(), old_logprobs=logp.tolist(),
                               advantage=float(torch.randn(1, generator=g)), reward=float(torch.rand(1, generator=g))))
    return out


def weights(group: LearnerGroup, path) -> dict[str, torch.Tensor]:
    group.send_weights(str(path))
    return load_file(str(path))


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_two_learners_update_like_one(make_config, tiny_model_path, ray_local, samples, tmp_path, loss_agg):
    """The loss is normalised over the whole batch (all ranks), so splitting it changes nothing."""
    initial = load_file(f"{tiny_model_path}/model.safetensors")
    results = {}
    for n in (1, 2):
        group = make_group(make_config, tiny_model_path, n, f"algo.loss_agg={loss_agg}")
        try:
            # Before the update the learner's logprobs are the behaviour logprobs (ratio 1 everywhere).
            for s, lp in zip(samples, group.logprobs(samples)):
                assert len(lp) == len(s.token_ids) and lp[0] == 0.0
                assert max(abs(a - b) for a, b, m in zip(lp, s.old_logprobs, s.loss_mask) if m) < 1e-5
            metrics = group.update(samples)
            results[n] = (metrics, weights(group, tmp_path / f"w{n}.safetensors"))
        finally:
            group.shutdown()
    (m1, w1), (m2, w2) = results[1], results[2]
    assert m1["tokens"] == m2["tokens"] == sum(sum(s.loss_mask) for s in samples)
    assert m2["micro_batches"] == 2
    for key in ("loss", "pg_loss", "clip_fraction", "approx_kl", "entropy", "grad_norm"):
        assert math.isfinite(m1[key]) and m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), key
    assert m1["clip_fraction"] == 0.0 and abs(m1["approx_kl"]) < 1e-6  # ratio 1: nothing clipped yet
    assert set(w1) == set(w2)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
    # Not vacuous: the update moved the weights (Adam's first step is about lr per parameter).
    moved = (w1["model.layers.0.mlp.up_proj.weight"] - initial["model.layers.0.mlp.up_proj.weight"]).abs()
    assert moved.max() > 5e-4


def test_ppo_trains_policy_and_critic_and_resumes_from_checkpoint(make_config, tiny_model_path, ray_local, samples,
                                                                  tmp_path):
    initial = load_file(f"{tiny_model_path}/model.safetensors")
    group = make_group(make_config, tiny_model_path, 2, "algo.name=ppo", "algo.kl_coef=0.05",
                       "algo.entropy_coef=0.01", "algo.epochs=2", "algo.critic_lr=1e-3")
    try:
        metrics = group.update(samples)
        for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm", "value_loss", "value_mean", "critic_grad_norm",
                    "step_time_s"):
            assert math.isfinite(metrics[key]), key
        assert metrics["value_loss"] > 0 and metrics["grad_norm"] > 0 and metrics["critic_grad_norm"] > 0
        assert metrics["updates"] == 1

        ckpt = tmp_path / "ckpt"
        group.save_checkpoint(str(ckpt))
        policy = load_file(str(ckpt / POLICY_DIR / "model.safetensors"))
        critic = load_file(str(ckpt / "learner" / "critic.safetensors"))
        name = "model.layers.1.self_attn.q_proj.weight"
        assert (policy[name] - initial[name]).abs().max() > 5e-4  # the policy moved
        assert (critic[name] - initial[name]).abs().max() > 5e-4  # the critic's own trunk moved
        assert (critic[name] - policy[name]).abs().max() > 5e-4  # ... separately from the policy
        assert critic["score.weight"].shape == (1, initial[name].shape[1])

        second = group.update(samples)
        after_second = weights(group, tmp_path / "second.safetensors")
        assert not torch.equal(after_second[name], policy[name])
        group.load_checkpoint(str(ckpt))
        restored = weights(group, tmp_path / "restored.safetensors")
        for key, value in policy.items():
            torch.testing.assert_close(restored[key], value, rtol=0, atol=0, msg=key)
        # Optimiser states (policy and critic), critic weights and the update count came back too: the same batch
        # gives the same second update again (fresh Adam moments would give a different step).
        again = group.update(samples)
        assert again["updates"] == 2
        for key in ("loss", "value_loss", "grad_norm", "critic_grad_norm"):
            assert again[key] == pytest.approx(second[key], rel=1e-5, abs=1e-7), key
        for key, value in weights(group, tmp_path / "again.safetensors").items():
            torch.testing.assert_close(value, after_second[key], rtol=1e-5, atol=1e-7, msg=key)
    finally:
        group.shutdown()


def test_a_learner_that_fails_to_start_fails_the_group_fast_and_frees_its_resources(make_config, ray_local, tmp_path):
    with pytest.raises(ray.exceptions.RayError, match="no-such-model"):
        make_group(make_config, str(tmp_path / "no-such-model"), 2)

    def live_placement_groups() -> list:
        return [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]

    deadline = time.monotonic() + 30  # removal is asynchronous
    while live_placement_groups() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_placement_groups()


class FirstPortTaken(LearnerGroup):
    """The race the group survives: the first rendezvous port it picks is bound by another socket (here this test's,
    listening) before rank 0 starts, as another process on the node may do."""

    def __init__(self, cfg, model_path: str, squatters: contextlib.ExitStack):
        self.squatters, self.ports = squatters, []  # the test's: it closes the socket, even if this raises
        super().__init__(cfg, model_path)

    def rank0_address(self) -> tuple[str, int]:
        host, port = super().rank0_address()
        if not self.ports:
            self.squatters.enter_context(socket.create_server((host, port)))
        self.ports.append(port)
        return host, port


def test_a_rendezvous_port_taken_before_rank_0_binds_it_starts_the_group_on_another(make_config, tiny_model_path,
                                                                                    ray_local, tmp_path):
    cfg = make_config("learner.num_learners=1", "learner.num_cpus_per_learner=0.25")  # rank 0 binds the port
    with contextlib.ExitStack() as squatters:
        group = FirstPortTaken(cfg, tiny_model_path, squatters)
        squatters.callback(group.shutdown)  # first out, before the socket closes
        assert len(group.ports) == 2 and group.ports[0] != group.ports[1]
        initial = load_file(f"{tiny_model_path}/model.safetensors")
        sent = weights(group, tmp_path / "w.safetensors")  # the policy gathered through the group: it works
        assert initial.keys() <= sent.keys() and all(torch.equal(sent[k], initial[k]) for k in initial)


def test_bf16_compute_updates_fp32_master_weights(make_config, tiny_model_path, ray_local, samples, tmp_path):
    """learner.dtype=bfloat16 computes in bf16 (FSDP2 MixedPrecisionPolicy) but steps fp32 weights: an Adam step of
    1e-6 on weights of ~0.02 survives, while bf16 weights (spacing ~1e-4 there) would round it away."""
    initial = load_file(f"{tiny_model_path}/model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    results = {}
    for dtype in ("float32", "bfloat16"):
        group = make_group(make_config, tiny_model_path, 2, "algo.lr=1e-6", f"learner.dtype={dtype}")
        try:
            metrics = group.update(samples)
            assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
            results[dtype] = weights(group, tmp_path / f"{dtype}.safetensors")  # exported as model.dtype (fp32)
        finally:
            group.shutdown()
    fp32, mixed = results["float32"], results["bfloat16"]
    assert mixed[name].dtype == torch.float32
    step = (mixed[name] - initial[name]).abs()
    assert (step > 5e-7).float().mean() > 0.9 and step.max() < 2e-6  # ~lr on (almost) every weight, kept exactly
    # Same update as in fp32 up to the gradients' bf16 noise: Adam's first step is lr * sign(gradient).
    agree = torch.sign(mixed[name] - initial[name]) == torch.sign(fp32[name] - initial[name])
    assert agree.float().mean() > 0.9


def test_the_importance_ratio_is_taken_against_the_behaviour_logprobs(make_config, tiny_model_path, ray_local,
                                                                      samples):
    """Tokens sampled by older weights (train.mode=async) carry the logprobs those weights gave them: here each
    is 0.5 above the current policy's, so every ratio is exp(-0.5), and the clip takes the tokens whose advantage
    is negative (their ratio is below 1 - clip_low)."""
    stale = [dataclasses.replace(s, old_logprobs=[lp + 0.5 * m for lp, m in zip(s.old_logprobs, s.loss_mask)])
             for s in samples]
    group = make_group(make_config, tiny_model_path, 1)
    try:
        metrics = group.update(stale)
    finally:
        group.shutdown()
    ratio = math.exp(-0.5)
    assert metrics["ratio_mean"] == pytest.approx(ratio, rel=1e-4)
    assert metrics["ratio_max"] == pytest.approx(ratio, rel=1e-4)
    assert metrics["approx_kl"] == pytest.approx(ratio - 1 + 0.5, rel=1e-3)
    negative = sum(sum(s.loss_mask) for s in samples if s.advantage < 0) / sum(sum(s.loss_mask) for s in samples)
    assert 0 < negative < 1 and metrics["clip_fraction"] == pytest.approx(negative, rel=1e-4)
