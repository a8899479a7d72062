"""The python tool: what the policy is shown, what is counted as an error, price and latency."""

from __future__ import annotations

import pytest

from orchestra_rl.config import ToolConfig
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.python import PythonTool, from_config
from orchestra_rl.tools.sandbox import SandboxLimits
from tests.helpers import require_sandbox


@pytest.fixture
def tool() -> PythonTool:
    require_sandbox()
    cfg = ToolConfig(
        kind="python", description="Run Python.", price_per_call=0.001, timeout_s=2, cpu_time_s=1, memory_mb=256
    )
    return from_config("python", cfg, ToolContext())


def test_schema_requires_code():
    tool = PythonTool("python", "Run Python.", SandboxLimits.from_tool_config(ToolConfig(kind="python")))
    assert tool.schema()["function"]["parameters"]["required"] == ["code"]
    assert tool.argument_error({}) == "invalid arguments for tool 'python' at arguments: 'code' is a required property"


@pytest.mark.integration
async def test_prints_result_with_price_and_latency(tool):
    result = await tool.call({"code": "print(2+2)"})
    assert (result.text, result.error, result.cost_usd) == ("4", None, 0.001)
    assert 0 < result.latency_s < 2


@pytest.mark.integration
async def test_failing_program_shows_traceback_and_counts_exit_code(tool):
    result = await tool.call({"code": "print('partial')\n1/0"})
    assert result.error == "exit code 1"
    assert result.text.startswith("partial\n[stderr]\nTraceback (most recent call last):")
    assert result.text.endswith("ZeroDivisionError: division by zero\n[exit code 1]")
    assert result.cost_usd == 0.001


@pytest.mark.integration
async def test_timeout_is_a_clear_error(tool):
    result = await tool.call({"code": "import time\nprint('started')\ntime.sleep(30)"})
    assert result.error == "wall timeout"
    assert result.text == "started\n[error: the program ran longer than 2 s and was killed]"
    assert 2 <= result.latency_s < 4


@pytest.mark.integration
async def test_memory_limit_is_a_clear_error(tool):
    result = await tool.call({"code": "x = bytearray(10**10)"})
    assert result.error == "memory limit"
    assert result.text.endswith("MemoryError\n[error: the program exceeded the memory limit of 256 MB]")


@pytest.mark.integration
async def test_silent_program(tool):
    result = await tool.call({"code": "x = 1"})
    assert (result.text, result.error) == ("(the program printed nothing)", None)
