"""The orchestrator served on Ray Serve (127.0.0.1) behind the OpenAI API, answering the official `openai` client:
one request, 8 concurrent ones batched on one vLLM engine, malformed requests refused with a 4xx while the server
keeps serving; and a second served orchestrator that calls the first as a tool, paying what it paid. Every turn
is constrained to a well-formed call of the tools named, so the untrained tiny policy orchestrates (and pays for)
real calls."""

import asyncio

import httpx
import openai
import pytest
import yaml

from orchestra_rl.serve.orchestrator import start_orchestrator, stop_orchestrator
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


def test_an_orchestrator_calls_another_served_orchestrator_as_a_tool_and_pays_what_it_paid(served, make_config,
                                                                                           tmp_path):
    """Two served policies: "orch-outer" (route /outer, its own engine and executor) calls the served "orch-test",
    declared in a tools config like any expert. The callee's reported cost flows into the caller's."""
    inner_url, inner_cfg = served
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "outer.yaml").write_text(yaml.safe_dump({"tools": {"sub_orchestrator": {
        "kind": "llm", "model": "orch-test", "base_url": inner_url, "include_task": True, "final_answer": True,
        "description": "Another orchestrator: hand it the task.", "price_in_per_mtok": 0, "price_out_per_mtok": 0,
        "timeout_s": 120, "max_retries": 0}, "answer": {"kind": "answer"}}}))
    cfg = make_config(f"hydra.searchpath=[file://{tmp_path}]", "tools=outer",
                      "rollout.constrained_tools=[sub_orchestrator]", "rollout.max_turns=2",
                      "rollout.max_tokens_per_turn=80", "rollout.num_cpus_per_worker=0.25",
                      "tools.num_cpus_per_executor=0.25", f"serve.port={inner_cfg.serve.port}", "serve.route=/outer",
                      "serve.model_name=orch-outer")
    with System(cfg) as outer:
        try:
            outer_url = start_orchestrator(cfg, outer.rollout.workers)
            assert outer_url.endswith("/outer/v1")
            client = openai.OpenAI(base_url=outer_url, api_key="unused", max_retries=0)
            reply = client.chat.completions.create(model="orch-outer",
                                                   messages=[{"role": "user", "content": QUESTION}])
        finally:
            stop_orchestrator(cfg)
    orch = reply.model_extra["orchestration"]
    calls = orch["tool_calls"]
    # Its only tool is the other orchestrator, whose reply is the final answer: the first call ends the episode.
    assert [c["name"] for c in calls] == ["sub_orchestrator"] and calls[0]["error"] is None, calls
    call = calls[0]
    assert reply.choices[0].message.content == call["result"] and orch["stop_reason"] == "answer"
    # The callee paid at least its own tokens (its usage, at its model's prices) and reported it; the caller
    # declared no price of its own, so the call costs exactly what the callee reported.
    callee_tokens = (call["tokens_in"] * inner_cfg.model.price_in_per_mtok
                     + call["tokens_out"] * inner_cfg.model.price_out_per_mtok) / 1e6
    assert call["tokens_in"] > 0 and call["reported_cost_usd"] >= callee_tokens - 1e-12 > 0
    assert call["cost_usd"] == call["reported_cost_usd"]
    assert orch["cost_usd"] == pytest.approx(orch["policy_cost_usd"] + call["cost_usd"])
    # The callee still serves on its own route.
    check_reply(openai.OpenAI(base_url=inner_url, api_key="unused").chat.completions.create(
        model="orch-test", messages=[{"role": "user", "content": QUESTION}]), inner_cfg)
