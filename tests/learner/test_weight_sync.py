"""Weight sync through the real system: a LearnerGroup (2 ranks, gloo, FSDP2) trains, syncs into a RolloutWorker's
vLLM engine, and the engine then scores tokens exactly as the learner does; a checkpoint loads in transformers."""

import copy
import glob
import json

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestra_rl.bench.sync import linear_fit, measure_sync
from orchestra_rl.checkpoint import POLICY_DIR
from orchestra_rl.learner.fsdp import save_hf_checkpoint
from orchestra_rl.learner.group import LearnerGroup
from orchestra_rl.system import System
from orchestra_rl.weight_sync import WeightSync
from orchestra_rl.types import TrainSample
from tests.helpers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runtime(make_config, ray_local):
    # 2 CPUs in the test cluster: rollout worker 1 + tool executor 0.5 + two learners at 0.25. The random-initialised
    # model (no copy pretraining): the update below moves its probe's logprob far, as the assertions expect.
    cfg = make_config("model.pretrain_steps=0", "tools.tools.python.enabled=false", f"serve.port={free_port()}", "serve.latency_scale=0.01",
                      "learner.num_learners=2", "learner.num_cpus_per_learner=0.25", "algo.lr=5e-3")
    with System(cfg) as rt:
        yield rt


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def hf_logprobs(folder: str, sequence: list[int]) -> list[float]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([sequence])
    with torch.no_grad():
        return model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0].tolist()


@pytest.mark.parametrize("weight_sync", ["file", "collective"])
def test_sync_makes_the_engine_score_like_the_learner(runtime, tmp_path, weight_sync):
    """Both paths: the /dev/shm file, and the broadcast over a gloo group of learner rank 0 + the engine."""
    cfg = copy.deepcopy(runtime.cfg)
    cfg.learner.weight_sync = weight_sync
    tokenizer = AutoTokenizer.from_pretrained(runtime.model_path)
    prompt = tokenizer.encode("<|im_start|>user\nWhat is the population of the country?<|im_end|>\n"
                              "<|im_start|>assistant\n")
    sequence = prompt + tokenizer.encode('<tool_call>\n{"name": "search", "arguments": {"query": "population"}}'
                                         "\n</tool_call><|im_end|>")
    worker = runtime.rollout.workers[0]
    group = LearnerGroup(cfg, runtime.model_path)
    sync_weights = WeightSync(weight_sync, group, runtime.rollout.workers)
    try:
        probe = TrainSample(sequence, [0] * len(prompt) + [1] * (len(sequence) - len(prompt)), [0.0] * len(sequence))
        sync_weights()  # the engine may hold an earlier test's weights; collective: forms the group
        learner_before = group.logprobs([probe])[0]
        engine_before = ray.get(worker.prompt_logprobs.remote(sequence))
        # Same weights, same alignment: the learner's position i is the engine's prompt logprob i - 1.
        assert max_diff(learner_before[1:], engine_before) < 1e-3

        # A batch that pushes the probe's tokens up and some random text down, with a large learning rate.
        g = torch.Generator().manual_seed(1)
        batch = [probe]
        for _ in range(3):
            ids = torch.randint(0, len(tokenizer), (48,), generator=g).tolist()
            batch.append(TrainSample(ids, [0] * 16 + [1] * 32, [0.0] * 48))
        batch = [TrainSample(s.token_ids, s.loss_mask, [lp * m for lp, m in zip(lps, s.loss_mask)],
                             advantage=1.0 if s is probe else -1.0)
                 for s, lps in zip(batch, group.logprobs(batch))]
        metrics = group.update(batch)
        assert metrics["grad_norm"] > 0

        shm_before = set(glob.glob("/dev/shm/orchestra_rl-*"))
        sync = sync_weights()
        assert set(glob.glob("/dev/shm/orchestra_rl-*")) <= shm_before  # no weights file left (or ever, collective)
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(runtime.model_path).parameters())
        # fp32, with the tied lm_head written as its own copy for vLLM's CPU runner.
        assert sync["bytes"] >= 4 * n_params and sync["seconds"] > 0
        print(f"\nsync ({weight_sync}): {sync['bytes'] / 1e6:.2f} MB in {sync['seconds'] * 1e3:.0f} ms; "
              f"update: {metrics['step_time_s'] * 1e3:.0f} ms for {metrics['tokens']:.0f} policy tokens")

        learner_after = group.logprobs([probe])[0]
        engine_after = ray.get(worker.prompt_logprobs.remote(sequence))
        assert max_diff(learner_after[1:], engine_after) < 1e-3
        # A stale engine would still report the old scores: the change is far above the tolerance.
        assert max_diff(engine_after, engine_before) > 0.05
        assert sum(engine_after[len(prompt) - 1:]) > sum(engine_before[len(prompt) - 1:])  # the probe went up
        # A second sync (collective: over the group formed by the first) sends the same and changes nothing.
        assert sync_weights()["bytes"] == sync["bytes"]
        assert max_diff(ray.get(worker.prompt_logprobs.remote(sequence)), engine_after) < 1e-6

        # A checkpoint is an HF model directory: transformers loads it and scores the same.
        ckpt = tmp_path / "ckpt"
        group.save_checkpoint(str(ckpt))
        assert max_diff(hf_logprobs(str(ckpt / POLICY_DIR), sequence), learner_after[1:]) < 1e-4
        assert AutoTokenizer.from_pretrained(str(ckpt / POLICY_DIR)).encode("What is 2+2?") == \
            tokenizer.encode("What is 2+2?")
    finally:
        group.shutdown()


def test_a_saved_checkpoint_loads_into_the_running_engines_and_scores_as_transformers(runtime, tmp_path):
    """System.load_policy: the way `eval` runs several checkpoints on one set of engines."""
    base = runtime.model_path
    sequence = AutoTokenizer.from_pretrained(base).encode("What is 17 * 23? <tool_call>python</tool_call>")
    worker = runtime.rollout.workers[0]
    # Another policy of the same model: every weight moved, the embeddings too (tied: a stale lm_head would show).
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    checkpoint = save_hf_checkpoint(state, base, str(tmp_path / "other"))
    try:
        runtime.load_policy(base)  # the engine may hold an earlier test's synced weights
        before = ray.get(worker.prompt_logprobs.remote(sequence))
        assert max_diff(before, hf_logprobs(base, sequence)) < 1e-3
        runtime.load_policy(checkpoint)
        assert runtime.model_path == checkpoint
        after = ray.get(worker.prompt_logprobs.remote(sequence))
        assert max_diff(after, hf_logprobs(checkpoint, sequence)) < 1e-3
        assert max_diff(after, before) > 0.05

        # A checkpoint of another shape is refused before anything is loaded: the engines keep their policy.
        config = json.loads((tmp_path / "other" / "config.json").read_text())
        (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 9}))
        assert "num_hidden_layers" in runtime.can_load(checkpoint)
        with pytest.raises(ValueError, match="cannot load .* into the running engines: .*num_hidden_layers"):
            runtime.load_policy(checkpoint)
        assert max_diff(ray.get(worker.prompt_logprobs.remote(sequence)), after) < 1e-6
    finally:
        runtime.load_policy(base)  # the module's other tests expect the base model
    assert max_diff(ray.get(worker.prompt_logprobs.remote(sequence)), before) < 1e-5


def test_bench_sync_measures_the_same_bytes_through_both_transports(runtime):
    group = LearnerGroup(runtime.cfg, runtime.model_path)
    try:
        file, collective = (measure_sync(group, runtime.rollout.workers, t, repeats=2) for t in ("file", "collective"))
    finally:
        group.shutdown()
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(runtime.model_path).parameters())
    assert file["bytes"] == collective["bytes"] >= 4 * n_params
    assert 0 < file["median_s"] <= file["max_s"] and 0 < collective["median_s"] <= collective["max_s"]


def test_linear_fit_recovers_a_line_and_says_how_well_it_fits():
    exact = linear_fit([(1e6, 0.01 + 1e6 / 2e9), (4e6, 0.01 + 4e6 / 2e9), (16e6, 0.01 + 16e6 / 2e9)])
    assert exact["intercept_s"] == pytest.approx(0.01) and exact["throughput_mb_per_s"] == pytest.approx(2000)
    assert exact["r2"] == pytest.approx(1.0)
    assert linear_fit([(1e6, 0.5), (2e6, 0.01), (3e6, 0.5)])["r2"] < 0.1
