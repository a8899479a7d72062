"""ToolExecutor as a real Ray actor (llm and answer tools only), ToolPool, and the tool registry."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import ray

from orchestra_rl.config import ToolConfig, ToolsConfig
from orchestra_rl.tools import executor as executor_module
from orchestra_rl.tools.answer import AnswerTool
from orchestra_rl.tools.base import Tool, ToolContext
from orchestra_rl.tools.executor import ToolExecutor, ToolPool, make_executor
from orchestra_rl.tools.registry import build_tools, tool_schemas
from orchestra_rl.types import ToolResult


def tools_config(math_concurrency: int = 8) -> ToolsConfig:
    return ToolsConfig(tools={
        "math": ToolConfig(kind="llm", model="stub-model", base_url="experts", description="math expert",
                           price_in_per_mtok=2.0, price_out_per_mtok=8.0, max_concurrency=math_concurrency),
        "answer": ToolConfig(kind="answer", description="final answer"),
    })


@pytest.fixture
def start_executor(ray_local, openai_stub_server):
    """Starts ToolExecutor actors against the stub API; kills them after the test."""
    handles = []

    def start(tools_cfg: ToolsConfig | None = None):
        ctx = ToolContext(experts_base_url=openai_stub_server.base_url)
        handles.append(make_executor(tools_cfg or tools_config(), ctx, num_cpus=0.1))
        return handles[-1]

    yield start
    for handle in handles:
        ray.kill(handle)


async def test_answer_round_trip_names_and_schemas(start_executor):
    executor = start_executor()

    result = await executor.call.remote("answer", {"answer": "Paris"})

    assert result == ToolResult(text="Paris")
    assert await executor.names.remote() == ["math", "answer"]
    schemas = await executor.schemas.remote()
    assert [s["function"]["name"] for s in schemas] == ["math", "answer"]
    assert schemas[1]["function"]["parameters"]["required"] == ["answer"]


async def test_llm_call_is_priced(start_executor):
    executor = start_executor()

    result = await executor.call.remote("math", {"question": "6*7?"})

    assert result.error is None and result.text == "42"
    assert result.cost_usd == pytest.approx(1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6, abs=1e-12)


async def test_unknown_tool_lists_the_known_ones(start_executor):
    result = await start_executor().call.remote("serch", {"query": "x"})

    assert result.error == "unknown tool 'serch'; known tools: math, answer"
    assert result.text == f"Error: {result.error}"


async def test_schema_violation_is_an_error_result(start_executor, openai_stub_server):
    result = await start_executor().call.remote("math", {"question": 7})

    assert result.error == "invalid arguments for tool 'math' at question: 7 is not of type 'string'"
    assert openai_stub_server.calls == 0


async def test_a_malformed_reply_is_an_error_result(start_executor, openai_stub_server):
    openai_stub_server.empty_choices = True  # a 200 response without choices, on every attempt
    executor = start_executor()

    result = await executor.call.remote("math", {"question": "q"})

    assert "MalformedReply: the reply has no choices" in result.error and result.cost_usd == 0.0
    stats = await executor.stats.remote()
    assert (stats["math"]["calls"], stats["math"]["errors"]) == (1, 1)


async def test_per_tool_concurrency_bound(start_executor, openai_stub_server):
    openai_stub_server.delay_s = 0.3
    executor = start_executor(tools_config(math_concurrency=2))

    start = time.perf_counter()
    results = await asyncio.gather(*(executor.call.remote("math", {"question": f"q{i}"}) for i in range(6)))
    elapsed = time.perf_counter() - start

    assert all(r.error is None for r in results)
    assert openai_stub_server.calls == 6
    assert openai_stub_server.peak_in_flight == 2
    assert elapsed >= 3 * 0.3  # three waves of two
    stats = await executor.stats.remote()
    assert stats["math"]["calls"] == 6 and stats["math"]["errors"] == 0
    assert stats["math"]["latency_s"] >= 6 * 0.3
    # The answer tool has its own slots: it does not wait behind the busy expert.
    openai_stub_server.delay_s = 3.0
    for _ in range(2):  # fill the expert's slots; left running until the fixture kills the actor
        executor.call.remote("math", {"question": "slow"})
    await asyncio.sleep(0.2)
    start = time.perf_counter()
    assert (await executor.call.remote("answer", {"answer": "a"})).text == "a"
    assert time.perf_counter() - start < 2.0
    assert openai_stub_server.in_flight == 2


async def test_tool_pool_round_robins_over_executors(start_executor):
    executors = [start_executor(), start_executor()]
    pool = ToolPool(executors)

    results = await asyncio.gather(*(pool.call("answer", {"answer": str(i)}) for i in range(4)))

    assert [r.text for r in results] == ["0", "1", "2", "3"]
    for executor in executors:
        assert (await executor.stats.remote())["answer"]["calls"] == 2


async def test_a_killed_executor_loses_no_call(start_executor, openai_stub_server):
    # Two executors; the process of the one serving half the calls is SIGKILLed while they wait on the API.
    executors = [start_executor(), start_executor()]
    pool = ToolPool(executors)
    pid = await executors[0].pid.remote()
    # One call each first: both actors up and their API clients made, so the four below reach the API at once.
    await asyncio.gather(*(e.call.remote("math", {"question": "warm-up"}) for e in executors))
    warm_up_calls, openai_stub_server.delay_s = openai_stub_server.calls, 1.5
    calls = [asyncio.ensure_future(pool.call("math", {"question": f"q{i}"})) for i in range(4)]
    deadline = time.monotonic() + 1.0
    while openai_stub_server.in_flight < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert openai_stub_server.in_flight == 4
    os.kill(pid, signal.SIGKILL)
    results = await asyncio.gather(*calls)
    assert [(r.text, r.error) for r in results] == [("42", None)] * 4
    assert await executors[0].pid.remote() != pid  # restarted by Ray, serving again
    assert openai_stub_server.calls - warm_up_calls == 6  # the two calls in flight on the dead one were sent again


class SlowTool(Tool):
    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        await asyncio.sleep(10)
        return ToolResult(text="too late")


async def test_deadline_turns_a_hung_tool_into_an_error_result(monkeypatch):
    # In-process: a test tool that never finishes stands in for a hung one.
    monkeypatch.setattr(executor_module, "DEADLINE_MARGIN_S", 0.0)
    cfg = ToolsConfig(tools={"answer": ToolConfig(kind="answer", timeout_s=0.2)})
    executor = ToolExecutor(cfg, ToolContext())
    executor.tools["answer"] = SlowTool("answer", "")

    result = await executor.call("answer", {})

    assert result.error == "tool 'answer' timed out after 0.2 s"
    assert 0.2 <= result.latency_s < 1.0
    assert executor.stats()["answer"]["errors"] == 1


def test_registry_skips_disabled_tools():
    cfg = ToolsConfig(tools={
        "answer": ToolConfig(kind="answer"),
        "search": ToolConfig(kind="search", enabled=False),  # disabled: its module is never imported
    })
    tools = build_tools(cfg, ToolContext())
    assert list(tools) == ["answer"] and isinstance(tools["answer"], AnswerTool)
    assert tool_schemas(tools)[0]["function"]["name"] == "answer"
