import asyncio
import os
import re
import signal
import time
from collections import Counter

import openai
import psutil
import pytest
import ray
from openai import AsyncOpenAI, OpenAI

from orchestra_rl.config import Config, DataConfig, ExpertModelConfig, ServeConfig
from orchestra_rl.data.world import build_world, load_tasks
from orchestra_rl.serve.experts import APP_NAME, DONT_KNOW, start_experts, stop_experts
from orchestra_rl.tools.llm import LLMTool
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
                                          "coin": _expert(0.5),
                                          # ~2 s a call (latency_scale 0.01): calls are in flight when a replica dies
                                          "slow": ExpertModelConfig(accuracy={f: 1.0 for f in FAMILIES},
                                                                    latency_mean_s=200.0, latency_sigma=0.01,
                                                                    output_tokens=40)}),
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
    assert sorted(m.id for m in client.models.list()) == ["broken", "coin", "oracle", "slow"]


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


def _replica_pids() -> list[int]:
    """The experts' replica processes: workers of the Ray this session started (its descendants), which Ray
    titles after the actor they run."""
    return sorted(p.pid for p in psutil.Process().children(recursive=True)
                  if _title(p).startswith(f"ray::ServeReplica:{APP_NAME}:"))


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # exited meanwhile
        return ""


def test_a_killed_expert_replica_loses_no_call(base_url, tasks):
    """One of the two replicas is SIGKILLed while eight tool calls wait on it and on the other: every call is
    answered (a dropped one comes back as a 5xx, which the tool retries, and is routed to the live replica), and
    Serve starts a replacement. Serve's router may send all eight to the other replica (seen under load): then no
    call was dropped, and the kill is tried again on the new pair."""
    async def calls_while_killing(victim: int):
        tool = LLMTool("slow_expert", "an expert", model="slow", base_url=base_url, timeout_s=20, max_retries=4,
                       backoff_s=0.2)
        calls = [asyncio.ensure_future(tool.run({"question": t.question})) for t in tasks[:8]]
        await asyncio.sleep(0.7)  # all eight are in flight (each waits ~2 s on a replica)
        os.kill(victim, signal.SIGKILL)
        results = await asyncio.gather(*calls)
        await tool.close()
        return results

    for _ in range(3):
        before = _replica_pids()
        assert len(before) == 2
        results = asyncio.run(calls_while_killing(before[0]))
        assert [(r.error, r.text) for r in results] == [(None, f"The answer is {t.answer}.") for t in tasks[:8]]
        deadline = time.monotonic() + 90
        while (after := _replica_pids()) and (len(after) < 2 or before[0] in after) and time.monotonic() < deadline:
            time.sleep(1)
        assert len(after) == 2 and before[0] not in after and before[1] in after
        if max(r.latency_s for r in results) > 2.5:  # calls of the killed replica were retried on the live one
            return
    pytest.fail("in three kills, no call was ever in flight on the killed replica")
