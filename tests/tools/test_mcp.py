"""Tools from MCP servers (tools/mcp.py), against the small server tests/mcp_server.py started by the tests: over
stdio and streamable HTTP, alone, in the executor (in-process and as a Ray actor), and inside a rollout."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mcp_types
import psutil
import pytest
import ray
from transformers import AutoTokenizer

from orchestra_rl.config import ConfigError, RolloutConfig, ToolConfig, ToolsConfig, describe_error, load_config
from orchestra_rl.envs.qa import QAEnvironment
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import ScriptedEngine
from orchestra_rl.tools.base import Pricing, ToolContext
from orchestra_rl.tools.executor import DEADLINE_MARGIN_S, ToolExecutor, close_executor, make_executor
from orchestra_rl.tools.mcp import content_text, tools_from_config
from orchestra_rl.tools.registry import build_tools, close_now
from orchestra_rl.types import Task
from tests.helpers import free_port

SERVER = str(Path(__file__).resolve().parents[1] / "mcp_server.py")
PRICE = 0.002
integration = pytest.mark.integration  # starts MCP server processes


def mcp_entry(**fields) -> ToolConfig:
    return ToolConfig(kind="mcp", **({"command": [sys.executable, SERVER]} | fields))


def server_processes(besides: frozenset[int] = frozenset()) -> list[psutil.Process]:
    """The test server's live processes among this test process's descendants (a Ray executor's included), but for
    those whose pids are `besides` (servers of other tests, still running)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if SERVER in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE and p.pid not in besides:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def running_servers() -> frozenset[int]:
    return frozenset(p.pid for p in server_processes())


@pytest.fixture(scope="module")
def calc():
    """One stdio server's tools for the module: each call bounded by 1 s, retried once."""
    tools = tools_from_config("calc", mcp_entry(price_per_call=PRICE, timeout_s=1.0, max_retries=1), ToolContext())
    yield tools
    close_now(list(tools.values()))


# --- config (no server) ---

@pytest.mark.parametrize("overrides, expected", [
    (["tools.tools.calculator.url=http://127.0.0.1:9/mcp"],
     "tools.tools.calculator.command: an mcp entry needs exactly one of command (a stdio server's argv) and url"),
    (["tools.tools.calculator.command=[]"], "tools.tools.calculator.command: an mcp entry needs exactly one of"),
    (["tools.tools.calculator.command=[]", "tools.tools.calculator.url=ftp://x"],
     "tools.tools.calculator.url: must be an http:// or https:// endpoint, got 'ftp://x'"),
    (["tools.tools.calculator.command=[]", "tools.tools.calculator.url=http://h/mcp",
      "+tools.tools.calculator.env.A=b"],
     "tools.tools.calculator.env: sets a stdio server's environment; this entry has a url"),
    (["tools.tools.calculator.prefix=calc."], "tools.tools.calculator.prefix: must be letters, digits, _ or -"),
    (["tools.tools.calculator.include=[add,add]"], "tools.tools.calculator.include: names a tool twice"),
    (["tools.tools.calculator.max_reply_chars=0"], "tools.tools.calculator.max_reply_chars: must be > 0"),
    (["rollout.constrained_tools=[calculator]"], "rollout.constrained_tools: no enabled tool named 'calculator'"),
])
def test_bad_mcp_config_is_one_line_naming_the_key(overrides, expected):
    with pytest.raises(Exception) as info:
        load_config(["tools=mcp_example", *overrides])
    assert describe_error(info.value).startswith(f"config error: {expected}")


def test_the_example_adds_a_stdio_server_to_the_default_tools():
    cfg = load_config(["tools=mcp_example"])
    calculator = cfg.tools.tools["calculator"]
    assert (calculator.kind, calculator.command, calculator.include) == ("mcp", ["python", "tests/mcp_server.py"],
                                                                        ["add", "lookup"])
    assert calculator.price_per_call == 0.00001
    assert {"python", "search", "math_expert", "answer"} <= set(cfg.tools.tools)


def test_result_text_joins_text_blocks_and_names_the_others():
    result = mcp_types.CallToolResult(content=[
        mcp_types.TextContent(type="text", text="first"),
        mcp_types.ImageContent(type="image", data="aGk=", mime_type="image/png"),
        mcp_types.EmbeddedResource(type="resource", resource=mcp_types.TextResourceContents(
            uri="file:///a.txt", text="from a resource")),
    ])
    assert content_text(result) == "first\n[image content (image/png) not shown]\nfrom a resource"
    structured = mcp_types.CallToolResult(content=[], structured_content={"result": 42})
    assert content_text(structured) == '{"result": 42}'


# --- stdio ---

@integration
def test_stdio_tools_are_discovered_with_their_schemas(calc):
    assert list(calc) == ["add", "lookup", "slow", "served"]
    add = calc["add"].schema()["function"]
    assert add["name"] == "add" and add["description"] == "Add two integers and return their sum."
    assert add["parameters"]["required"] == ["a", "b"]
    assert {k: v["type"] for k, v in add["parameters"]["properties"].items()} == {"a": "integer", "b": "integer"}
    assert calc["lookup"].parameters["required"] == ["key"] and calc["lookup"].entry == "calc"


@integration
async def test_a_call_returns_the_result_and_costs_the_price(calc):
    result = await calc["add"].call({"a": 2, "b": 40})
    assert (result.text, result.cost_usd, result.error) == ("42", PRICE, None)
    assert 0 < result.latency_s < 1
    assert (await calc["lookup"].call({"key": "France"})).text == "Paris"


@integration
async def test_an_error_result_is_an_error_the_policy_sees(calc):
    result = await calc["lookup"].call({"key": "Atlantis"})
    assert result.error is not None and "no capital known for 'Atlantis'" in result.error
    assert result.text == f"Error: {result.error}"
    assert result.cost_usd == PRICE  # the server answered: billed


@integration
async def test_bad_arguments_never_reach_the_server(calc):
    before = int((await calc["served"].call({})).text)
    wrong_type = await calc["add"].call({"a": "two", "b": 1})
    missing = await calc["add"].call({"a": 1})
    assert wrong_type.error == "invalid arguments for tool 'add' at a: 'two' is not of type 'integer'"
    assert missing.error == "invalid arguments for tool 'add' at arguments: 'b' is a required property"
    assert wrong_type.cost_usd == missing.cost_usd == 0
    assert int((await calc["served"].call({})).text) == before


@integration
async def test_a_call_past_its_timeout_is_retried_then_an_error_and_the_session_goes_on(calc):
    start = time.perf_counter()
    result = await calc["slow"].call({"seconds": 30})
    assert result.error is not None and "tool 'slow': failed after 2 attempt(s): TimeoutError" in result.error
    assert result.cost_usd == 0 and time.perf_counter() - start < calc["slow"].deadline_s
    assert (await calc["add"].call({"a": 1, "b": 1})).text == "2"


@integration
@pytest.mark.parametrize("command, cause", [
    (["/nonexistent/mcp-server"], "failed after 1 attempt(s): FileNotFoundError"),  # not retried
    ([sys.executable, "-c", "raise SystemExit(3)"], "failed after 2 attempt(s): MCPError: Connection closed"),
])
def test_a_server_that_cannot_start_is_a_clear_error(command, cause):
    with pytest.raises(ConfigError) as info:
        tools_from_config("broken", mcp_entry(command=command, max_retries=1), ToolContext())
    assert info.value.key == "tools.tools.broken.command"
    assert info.value.problem.startswith(f"MCP server broken ({' '.join(command)}) could not be started or reached")
    assert cause in info.value.problem


@integration
async def test_a_server_that_died_is_started_again_and_closing_stops_it():
    others = running_servers()
    tools = tools_from_config("calc", mcp_entry(timeout_s=10.0, max_retries=1), ToolContext())
    try:
        assert (await tools["add"].call({"a": 1, "b": 1})).text == "2"
        [first] = server_processes(others)
        first.kill()  # not reaped here: the session's own child watcher does it
        while first.is_running() and first.status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(0.01)
        assert (await tools["add"].call({"a": 1, "b": 2})).text == "3"
        assert (await tools["served"].call({})).text == "1"  # a new server process served it
        [second] = server_processes(others)
        assert second.pid != first.pid
        in_flight = asyncio.create_task(tools["slow"].call({"seconds": 30}))
        await asyncio.sleep(0.5)
    finally:
        for tool in tools.values():
            await tool.close()
    assert server_processes(others) == []
    assert (await in_flight).error.endswith("tool 'slow': the session was closed during the call")
    closed = await tools["add"].call({"a": 1, "b": 1})  # an error, neither an exception nor a hang
    assert closed.error == f"MCP server calc ({sys.executable} {SERVER}), tool 'add': the session is closed"


@integration
def test_prefix_include_and_clashing_names():
    others = running_servers()
    tools = build_tools(ToolsConfig(tools={"calc": mcp_entry(prefix="calc_", include=["add"]),
                                           "answer": ToolConfig(kind="answer")}), ToolContext())
    try:
        assert list(tools) == ["calc_add", "answer"] and tools["calc_add"].remote_name == "add"
        assert asyncio.run(tools["calc_add"].call({"a": 20, "b": 22})).text == "42"
    finally:
        close_now(list(tools.values()))
    with pytest.raises(ConfigError) as info:
        build_tools(ToolsConfig(tools={"add": ToolConfig(kind="answer"), "calc": mcp_entry()}), ToolContext())
    assert str(info.value) == ("tools.tools.calc: contributes a tool named 'add', as does tools.tools.add: tool names "
                               "must be unique (an mcp entry can set a prefix, or include fewer tools)")
    with pytest.raises(ConfigError) as info:
        build_tools(ToolsConfig(tools={"calc": mcp_entry(include=["add", "divide"])}), ToolContext())
    assert info.value.key == "tools.tools.calc.include"
    assert info.value.problem.endswith("offers no tool divide; it offers: add, lookup, slow, served")
    assert server_processes(others) == []  # a failed build stopped the servers it had started


# --- streamable HTTP ---

@pytest.fixture
def http_server():
    """The test server over streamable HTTP on a free loopback port, answering only the bearer token it is given."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port)],
                            env={**os.environ, "MCP_TEST_TOKEN": "s3cret"})
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the MCP HTTP server did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(10)


@integration
async def test_a_streamable_http_server_with_a_bearer_token(http_server, monkeypatch):
    monkeypatch.setenv("CALC_TOKEN", "s3cret")
    tools = tools_from_config("web", mcp_entry(command=[], url=http_server, api_key_env="CALC_TOKEN",
                                               price_per_call=PRICE), ToolContext())
    try:
        assert list(tools) == ["add", "lookup", "slow", "served"]
        result = await tools["add"].call({"a": 2, "b": 40})
        assert (result.text, result.cost_usd, result.error) == ("42", PRICE, None)
    finally:
        await tools["add"].close()
    with pytest.raises(ConfigError) as info:  # no token: the server refuses
        tools_from_config("web", mcp_entry(command=[], url=http_server, max_retries=0), ToolContext())
    assert info.value.key == "tools.tools.web.url" and "could not be started or reached" in info.value.problem


# --- in the executor and a rollout ---

def calc_tools_config(**fields) -> ToolsConfig:
    return ToolsConfig(tools={"calc": mcp_entry(price_per_call=PRICE, **fields), "answer": ToolConfig(kind="answer")})


@integration
async def test_an_mcp_tool_call_inside_a_rollout(tiny_model_path):
    others = running_servers()
    executor = ToolExecutor(calc_tools_config(max_concurrency=1), ToolContext())
    try:
        assert executor.names() == ["add", "lookup", "slow", "served", "answer"]
        # The entry's limits apply to each of its tools: one shared concurrency slot, the server's deadline.
        assert executor.slots["add"] is executor.slots["slow"] is not executor.slots["answer"]
        assert executor.deadlines["add"] == executor.tools["add"].deadline_s + DEADLINE_MARGIN_S
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
        chat = ChatFormat(tokenizer, "Use the tools.", executor.schemas())
        assert "Add two integers and return their sum." in tokenizer.decode(chat.prompt_ids("What is 2 + 40?"))
        turns = ['<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 40}}\n</tool_call>',
                 '<tool_call>\n{"name": "answer", "arguments": {"answer": "42"}}\n</tool_call>']
        loop = AgentLoop(ScriptedEngine(tokenizer, turns), QAEnvironment(executor.call, {"answer"}), chat,
                         RolloutConfig(max_turns=4, max_tokens_per_turn=10**6, max_total_tokens=10**7), Pricing(0, 0))
        trajectory = await loop.run(Task(task_id="t", family="arithmetic", question="What is 2 + 40?", answer="42"),
                                    0)
        assert (trajectory.stop_reason, trajectory.final_answer) == ("answer", "42")
        call = trajectory.tool_calls[0]
        assert (call.name, call.arguments, call.result.text, call.result.error) == ("add", {"a": 2, "b": 40}, "42",
                                                                                     None)
        assert call.result.cost_usd == PRICE and trajectory.tool_cost_usd == trajectory.cost_usd == PRICE
        assert executor.stats()["add"]["calls"] == 1
        # One slot for the server: two calls of its tools run one after the other.
        start = time.perf_counter()
        await asyncio.gather(executor.call("slow", {"seconds": 0.5}), executor.call("slow", {"seconds": 0.5}))
        assert time.perf_counter() - start >= 1.0
    finally:
        await executor.close()
    assert server_processes(others) == []


@integration
async def test_the_executor_actor_serves_mcp_tools_and_closes_them(ray_local):
    others = running_servers()
    executor = make_executor(calc_tools_config(), ToolContext(), num_cpus=0.1)
    try:
        schemas = await executor.schemas.remote()
        assert [s["function"]["name"] for s in schemas] == ["add", "lookup", "slow", "served", "answer"]
        result = await executor.call.remote("add", {"a": 2, "b": 40})
        assert (result.text, result.cost_usd, result.error) == ("42", PRICE, None)
        assert len(server_processes(others)) == 1
    finally:
        await asyncio.to_thread(close_executor, executor)
    assert server_processes(others) == []
    with pytest.raises(ray.exceptions.RayActorError):
        await executor.names.remote()
