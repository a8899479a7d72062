import asyncio
import re
from collections import Counter

import openai
import pytest
import ray
from openai import AsyncOpenAI, OpenAI

from orchestra_rl.config import Config, DataConfig, ExpertModelConfig, ServeConfig
from orchestra_rl.data.world import build_world, load_tasks
from orchestra_rl.serve.experts import DONT_KNOW, start_experts, stop_experts
from tests.helpers import free_port

pytestmark = pytest.mark.integration
FAMILIES = ("arithmetic", "lookup", "multihop", "hard")


def _expert(accuracy: float, output_tokens: int = 40) -> ExpertModelConfig:
    return ExpertModelConfig(accuracy={f: accuracy for f in FAMILIES}, latency_mean_s=0.5, latency_sigma=0.5,
                             output_tokens=output_tokens)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return build_world(DataConfig(cache_dir=str(tmp_path_factory.mktemp("worlds")), num_countries=8,
                                  num_companies=8, num_people=8, tasks_per_family=16))


@pytest.fixture(scope="module")
def base_url(ray_local, world_dir):
    cfg = Config(data=DataConfig(experts={"oracle": _expert(1.0, output_tokens=100), "broken": _expert(0.0),
                                          "coin": _expert(0.5)}),
                 serve=ServeConfig(port=free_port(), latency_scale=0.01))
    assert ray.is_initialized()  # start_experts runs on the caller's Ray
    try:
        yield start_experts(cfg, world_dir)
    finally:
        stop_experts()


@pytest.fixture(scope="module")
def client(base_url):
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tasks(world_dir):
    """10 tasks of each family: 40 questions."""
    every = load_tasks(world_dir, "train") + load_tasks(world_dir, "test")
    return [t for f in FAMILIES for t in [t for t in every if t.family == f][:10]]


def _answer(content: str) -> str:
    match = re.fullmatch(r"The answer is (.+)\.", content)
    assert match, content
    return match.group(1)


async def _ask_all(base_url, model, tasks):
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    responses = await asyncio.gather(*(client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "Answer briefly."},
                               {"role": "user", "content": f"Please answer: {t.question}"}]) for t in tasks))
    await client.close()
    return responses


def test_base_url(base_url):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)


def test_models_are_listed(client):
    assert sorted(m.id for m in client.models.list()) == ["broken", "coin", "oracle"]


@pytest.mark.parametrize("model, accuracy", [("oracle", 1.0), ("broken", 0.0)])
def test_accuracy_extremes_are_exact(base_url, tasks, model, accuracy):
    responses = asyncio.run(_ask_all(base_url, model, tasks))
    correct = Counter(t.family for t, r in zip(tasks, responses)
                      if _answer(r.choices[0].message.content) == t.answer)
    assert {f: correct[f] / 10 for f in FAMILIES} == {f: accuracy for f in FAMILIES}
    for r in responses:
        assert r.model == model and r.choices[0].finish_reason == "stop"


def test_accuracy_is_close_to_configured_and_varies_across_calls(base_url, tasks):
    responses = asyncio.run(_ask_all(base_url, "coin", tasks * 5))
    correct = [_answer(r.choices[0].message.content) == t.answer for t, r in zip(tasks * 5, responses)]
    assert 0.35 <= sum(correct) / len(correct) <= 0.65  # 200 calls at p = 0.5: ±0.15 is > 4 standard deviations
    # the same question gets both right and wrong answers
    assert any(correct[i] != correct[i + len(tasks)] for i in range(len(tasks)))


def test_wrong_answers_are_plausible(base_url, tasks):
    responses = asyncio.run(_ask_all(base_url, "broken", tasks))
    for t, r in zip(tasks, responses):
        wrong = _answer(r.choices[0].message.content)
        assert wrong != t.answer
        if re.fullmatch(r"-?\d+", t.answer):
            assert re.fullmatch(r"-?\d+", wrong) and abs(int(wrong) - int(t.answer)) <= 0.3 * abs(int(t.answer)) + 1
        else:
            assert re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)?", wrong)


def test_usage(client, tasks):
    question = tasks[0].question
    r = client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": question}])
    assert r.usage.prompt_tokens == max(1, len(question) // 4)
    assert 75 <= r.usage.completion_tokens <= 125  # output_tokens 100, ±25 %
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_plain_arithmetic_and_unknown_questions(client):
    def ask(content):
        r = client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": content}])
        return r.choices[0].message.content

    assert ask("Compute (12 + 30) * 2 - 4 for me.") == "The answer is 80."
    assert ask("What is 7 / 2?") == "The answer is 3.5."
    assert ask("Who wrote the Iliad?") == DONT_KNOW
    assert ask([{"type": "text", "text": "What is 6 * 7?"}]) == "The answer is 42."  # content parts


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found" and "gpt-17" in info.value.body["message"]


def test_bad_requests(client):
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model="oracle", messages=[{"role": "system", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": "hi"}], stream=True)
