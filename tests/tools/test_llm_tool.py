"""LLMTool against a stub of a remote paid OpenAI-compatible API: pricing, retries, timeouts, configuration."""

from __future__ import annotations

import socket

import pytest

from orchestra_rl.config import ConfigError, ToolConfig
from orchestra_rl.tools import llm
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.llm import LLMTool


@pytest.fixture
async def make_tool():
    """Builds LLMTools with fast backoff (so retry tests stay short) and closes them after the test."""
    tools: list[LLMTool] = []

    def make(base_url: str, **kwargs) -> LLMTool:
        kwargs = {"model": "stub-model", "timeout_s": 5.0, "backoff_s": 0.05, **kwargs}
        tools.append(LLMTool("expert", "a stub expert", base_url=base_url, **kwargs))
        return tools[-1]

    yield make
    for tool in tools:
        await tool.close()


def llm_config(**overrides) -> ToolConfig:
    fields = {"kind": "llm", "model": "stub-model", "base_url": "experts", "price_in_per_mtok": 2.0,
              "price_out_per_mtok": 8.0, "price_per_call": 0.001, "max_tokens": 64, **overrides}
    return ToolConfig(**fields)


async def test_cost_tokens_and_request_from_config(openai_stub_server):
    tool = llm.from_config("expert", llm_config(), ToolContext(experts_base_url=openai_stub_server.base_url))
    try:
        result = await tool.call({"question": "What is 6*7?", "context": "Be brief."})
    finally:
        await tool.close()

    assert result.error is None
    assert result.text == "42"
    assert (result.tokens_in, result.tokens_out) == (1000, 500)
    assert result.cost_usd == pytest.approx(1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6 + 0.001, abs=1e-12)
    assert result.latency_s > 0
    (request,) = openai_stub_server.requests
    assert request["model"] == "stub-model"
    assert request["max_tokens"] == 64
    assert request["messages"] == [
        {"role": "system", "content": "Context:\nBe brief."},
        {"role": "user", "content": "What is 6*7?"},
    ]
    assert openai_stub_server.api_keys == [llm.NO_API_KEY]


async def test_include_task_hands_the_expert_the_users_task(openai_stub_server):
    ctx = ToolContext(experts_base_url=openai_stub_server.base_url)
    with_task = llm.from_config("expert", llm_config(include_task=True), ctx)
    without = llm.from_config("expert", llm_config(), ctx)
    try:
        await with_task.call({"question": "Solve it."}, task="What is 6*7?")
        await without.call({"question": "Solve it."}, task="What is 6*7?")
    finally:
        await with_task.close()
        await without.close()
    first, second = openai_stub_server.requests
    assert first["messages"] == [{"role": "user", "content": "Task: What is 6*7?\n\nSolve it."}]
    assert second["messages"] == [{"role": "user", "content": "Solve it."}]


async def test_api_key_is_read_from_the_named_environment_variable(openai_stub_server, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", "sk-test-123")
    cfg = llm_config(base_url=openai_stub_server.base_url, api_key_env="STUB_API_KEY")
    tool = llm.from_config("expert", cfg, ToolContext())
    try:
        assert (await tool.call({"question": "hi"})).error is None
    finally:
        await tool.close()
    assert openai_stub_server.api_keys == ["sk-test-123"]


def test_missing_api_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("STUB_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="environment variable STUB_API_KEY is not set") as err:
        llm.from_config("expert", llm_config(base_url="http://127.0.0.1:9/v1", api_key_env="STUB_API_KEY"),
                        ToolContext())
    assert err.value.key == "tools.tools.expert.api_key_env"


def test_experts_without_an_endpoint_is_a_clear_error():
    with pytest.raises(ConfigError, match="no endpoint for model 'stub-model'"):
        llm.from_config("expert", llm_config(), ToolContext(experts_base_url=""))


@pytest.mark.parametrize("status", [503, 429])
async def test_transient_failures_are_retried(openai_stub_server, make_tool, status):
    openai_stub_server.fail_first, openai_stub_server.fail_status = 2, status
    tool = make_tool(openai_stub_server.base_url, max_retries=2)

    result = await tool.call({"question": "q"})

    assert result.error is None and result.text == "42"
    assert openai_stub_server.calls == 3
    # Latency covers the whole call: at least the two backoffs (each at least half its nominal delay).
    assert result.latency_s >= 0.5 * (tool.retry.backoff_delay_max(0) + tool.retry.backoff_delay_max(1))
    assert (result.tokens_in, result.tokens_out) == (1000, 500)  # usage of the successful attempt


async def test_persistent_server_errors_give_up_after_max_retries(openai_stub_server, make_tool):
    openai_stub_server.always_status = 503
    tool = make_tool(openai_stub_server.base_url, max_retries=3)

    result = await tool.call({"question": "q"})

    assert openai_stub_server.calls == 4
    assert result.error is not None
    assert "failed after 4 attempt(s)" in result.error and "InternalServerError" in result.error
    assert result.text == f"Error: {result.error}"
    assert result.cost_usd == 0.0 and result.tokens_in == 0


@pytest.mark.parametrize("status, exc_name", [(400, "BadRequestError"), (404, "NotFoundError")])
async def test_client_errors_are_not_retried(openai_stub_server, make_tool, status, exc_name):
    openai_stub_server.always_status = status
    tool = make_tool(openai_stub_server.base_url, max_retries=3)

    result = await tool.call({"question": "q"})

    assert openai_stub_server.calls == 1
    assert "failed after 1 attempt(s)" in result.error and exc_name in result.error


async def test_timeout_becomes_an_error_result(openai_stub_server, make_tool):
    openai_stub_server.delay_s = 2.0
    tool = make_tool(openai_stub_server.base_url, timeout_s=0.3, max_retries=1)

    result = await tool.call({"question": "q"})

    assert openai_stub_server.calls == 2
    assert "failed after 2 attempt(s)" in result.error and "Timeout" in result.error
    assert 0.6 <= result.latency_s < 2.0  # two timed-out attempts, not the server's full delay


async def test_connection_errors_are_retried(make_tool):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tool = make_tool(f"http://127.0.0.1:{port}/v1", max_retries=2)

    result = await tool.call({"question": "q"})

    assert "failed after 3 attempt(s)" in result.error and "APIConnectionError" in result.error


def test_deadline_covers_every_attempt_and_backoff():
    tool = LLMTool("expert", "", model="m", base_url="http://127.0.0.1:9/v1", timeout_s=10.0, max_retries=2,
                   backoff_s=0.5, backoff_max_s=1.5)
    assert tool.deadline_s == 3 * 10.0 + 2 * 1.5  # three timed-out attempts and the two longest waits


async def test_a_reply_that_is_not_json_is_retried_then_accepted(openai_stub_server, make_tool):
    openai_stub_server.not_json_first = 1  # a body cut short: a transient fault of the server or the network
    result = await make_tool(openai_stub_server.base_url, max_retries=1).call({"question": "q"})
    assert result.error is None and result.text == "42" and openai_stub_server.calls == 2


async def test_a_reply_without_choices_is_an_error_not_an_exception(openai_stub_server, make_tool):
    openai_stub_server.empty_choices = True
    result = await make_tool(openai_stub_server.base_url, max_retries=1).call({"question": "q"})
    assert openai_stub_server.calls == 2 and "MalformedReply: the reply has no choices" in result.error
    assert result.cost_usd == 0.0


async def test_a_reply_without_usage_is_billed_by_estimate_and_flagged(openai_stub_server, make_tool):
    openai_stub_server.no_usage, openai_stub_server.answer = True, "x" * 400
    tool = make_tool(openai_stub_server.base_url, pricing=llm.Pricing(2.0, 8.0))
    result = await tool.call({"question": "y" * 800})
    assert result.usage_estimated and (result.tokens_in, result.tokens_out) == (200, 100)
    assert result.cost_usd == pytest.approx((200 * 2.0 + 100 * 8.0) / 1e6)


async def test_a_huge_reply_is_cut_and_says_so(openai_stub_server, make_tool):
    openai_stub_server.answer = "z" * 2_000_000
    result = await make_tool(openai_stub_server.base_url, max_reply_chars=1000).call({"question": "q"})
    assert result.text == "z" * 1000 + "\n[reply cut: 1000 of 2000000 characters]"
    assert result.tokens_out == 500 and not result.usage_estimated  # billed as the server reported


async def test_retry_after_of_a_429_is_honoured_up_to_the_backoff_cap(openai_stub_server, make_tool):
    openai_stub_server.fail_first, openai_stub_server.fail_status, openai_stub_server.retry_after = 1, 429, "0.6"
    result = await make_tool(openai_stub_server.base_url, max_retries=1, backoff_max_s=2.0).call({"question": "q"})
    first_reply, second_call = openai_stub_server.intervals[0][1], openai_stub_server.intervals[1][0]
    assert result.error is None and second_call - first_reply >= 0.6  # not our 0.05 s backoff
    openai_stub_server.fail_first, openai_stub_server.retry_after = 3, "60"  # call 3 is refused, call 4 answered
    capped = await make_tool(openai_stub_server.base_url, max_retries=1, backoff_max_s=0.2).call({"question": "q"})
    assert capped.error is None and openai_stub_server.calls == 4
    assert openai_stub_server.intervals[3][0] - openai_stub_server.intervals[2][1] < 1.0  # 60 s asked, 0.2 given


async def test_an_orchestrator_endpoints_reported_cost_is_added_to_the_call(openai_stub_server, make_tool):
    """A served orchestrator reports what it paid (orchestration.cost_usd); the caller pays that on top of its own
    price for the callee's tokens."""
    openai_stub_server.extra = {"orchestration": {"cost_usd": 0.0125, "tool_calls": []}}
    result = await make_tool(openai_stub_server.base_url, pricing=llm.Pricing(1.0, 2.0)).call({"question": "q"})
    assert result.error is None and result.reported_cost_usd == 0.0125
    assert result.cost_usd == pytest.approx(1000 * 1.0 / 1e6 + 500 * 2.0 / 1e6 + 0.0125, abs=1e-12)


@pytest.mark.parametrize("cost", [-1.0, "0.5", None, True])
async def test_a_reported_cost_that_is_not_a_dollar_amount_is_a_malformed_reply(openai_stub_server, make_tool, cost):
    openai_stub_server.extra = {"orchestration": {"cost_usd": cost}}
    result = await make_tool(openai_stub_server.base_url, max_retries=1).call({"question": "q"})
    assert result.cost_usd == 0.0 and "orchestration.cost_usd is not a dollar amount" in result.error
    assert openai_stub_server.calls == 2  # retried once: a garbled reply may be the network's fault
