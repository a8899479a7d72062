"""The orchestrator served on Ray Serve (127.0.0.1) behind the OpenAI API, answering the official `openai` client:
one request, 8 concurrent ones batched on one vLLM engine, malformed requests refused with a 4xx while the server
keeps serving. Every turn is constrained to a well-formed call of the math expert or the answer tool, so the
untrained tiny policy orchestrates (and pays for) real calls."""

import asyncio

import httpx
import openai
import pytest

from orchestra_rl.serve.orchestrator import start_orchestrator
from orchestra_rl.system import System
from tests.helpers import free_port

pytestmark = pytest.mark.integration

QUESTION = "What is 17 * 23?"


@pytest.fixture(scope="module")
def served(make_config, ray_local):
    cfg = make_config("tools.tools.python.enabled=false", "rollout.max_turns=3", "rollout.max_tokens_per_turn=80",
                      "rollout.constrained_tools=[math_expert,answer]", f"serve.port={free_port()}",
                      "serve.latency_scale=0.01", "serve.model_name=orch-test")
    with System(cfg) as system:
        yield start_orchestrator(cfg, system.rollout.workers), cfg


def check_reply(reply, cfg) -> dict:
    """The reply's orchestration record, after checking it against the reply and the configured prices."""
    orch = reply.model_extra["orchestration"]
    calls = orch["tool_calls"]
    assert reply.model == "orch-test" and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert all(c["name"] in ("math_expert", "answer") for c in calls) and 1 <= orch["turns"] <= 3
    if orch["stop_reason"] == "answer":  # the final call's result is the reply
        assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content == calls[-1]["result"]
    else:
        assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == ""
    policy = (reply.usage.prompt_tokens * cfg.model.price_in_per_mtok
              + reply.usage.completion_tokens * cfg.model.price_out_per_mtok) / 1e6
    assert orch["policy_cost_usd"] == pytest.approx(policy)
    assert orch["cost_usd"] == pytest.approx(policy + sum(c["cost_usd"] for c in calls))
    return orch


def test_the_official_client_gets_an_orchestrated_answer_with_usage_and_cost(served):
    base_url, cfg = served
    client = openai.OpenAI(base_url=base_url, api_key="unused")
    assert [m.id for m in client.models.list()] == ["orch-test"]
    reply = client.chat.completions.create(model="orch-test", messages=[{"role": "user", "content": QUESTION}])
    orch = check_reply(reply, cfg)
    expert_calls = [c for c in orch["tool_calls"] if c["name"] == "math_expert"]
    assert all(c["cost_usd"] > 0 for c in expert_calls if c["error"] is None)  # the experts bill their tokens


def test_concurrent_requests_run_at_once_and_bad_ones_get_a_4xx(served):
    base_url, cfg = served

    async def eight():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused")
        replies = await asyncio.gather(*(client.chat.completions.create(
            model="orch-test", messages=[{"role": "user", "content": f"{QUESTION} ({i})"}]) for i in range(8)))
        await client.close()
        return replies

    replies = asyncio.run(eight())
    spans = [(r.model_extra["orchestration"]["started"], r.model_extra["orchestration"]["finished"])
             for r in replies]
    for reply in replies:
        check_reply(reply, cfg)
    # Served concurrently: some moment when most of the 8 were in flight together (a lock would give 1).
    assert max(sum(s <= start < f for s, f in spans) for start, _ in spans) >= 4

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model="orch-test", messages=[{"role": "system", "content": "hi"}])
    raw = httpx.post(f"{base_url}/chat/completions", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    raw = httpx.post(f"{base_url}/chat/completions", json=["a list"], timeout=30)
    assert raw.status_code == 400
    # Still serving.
    check_reply(client.chat.completions.create(model="orch-test", messages=[{"role": "user", "content": QUESTION}]),
                cfg)
