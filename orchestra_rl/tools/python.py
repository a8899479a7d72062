"""The `python` tool: run a model-written program in the sandbox and show the policy what it printed.

A program that fails (a traceback, a non-zero exit) is an ordinary result the policy learns from; `error` is
still set ("exit code N", or the limit that stopped it) so failed calls can be counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from orchestra_rl.config import ToolConfig
from orchestra_rl.tools.base import Pricing, Tool, ToolContext
from orchestra_rl.tools.sandbox import SandboxLimits, SandboxResult, check_sandbox, run_sandboxed_async
from orchestra_rl.types import ToolResult

logger = logging.getLogger(__name__)

# What the policy is told when a limit stopped its program (formatted with the run's SandboxLimits).
LIMIT_MESSAGES = {
    "wall timeout": "the program ran longer than {wall_timeout_s:g} s and was killed",
    "cpu time limit": "the program used more than {cpu_time_s:g} s of CPU time and was killed",
    "memory limit": "the program exceeded the memory limit of {memory_mb} MB",
    "process limit": "the program exceeded the limit of {max_processes} processes",
    "file size limit": "the program wrote a file larger than {max_file_mb} MB",
    "output truncated": "the program printed more than {max_output_bytes} bytes; it was stopped and its output cut",
}


class PythonTool(Tool):
    parameters = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "A complete Python 3 program; print() what you need to see."}
        },
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(self, name: str, description: str, limits: SandboxLimits, pricing: Pricing = Pricing()):
        super().__init__(name, description, pricing)
        self.limits = limits

    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        start = time.monotonic()
        result = await run_sandboxed_async(arguments["code"], self.limits)
        text, error = self._describe(result)
        return ToolResult(text=text, cost_usd=self.pricing.cost(), latency_s=time.monotonic() - start, error=error)

    def _describe(self, result: SandboxResult) -> tuple[str, str | None]:
        """The text shown to the policy (stdout, then marked stderr, then why it stopped) and the error label."""
        parts = [result.stdout] if result.stdout else []
        if result.stderr:
            parts.append(f"[stderr]\n{result.stderr}")
        if result.killed_reason:
            message = LIMIT_MESSAGES[result.killed_reason].format(**asdict(self.limits))
            parts.append(f"[error: {message}]")
            error = result.killed_reason
        elif result.exit_code != 0:
            parts.append(f"[exit code {result.exit_code}]")
            error = f"exit code {result.exit_code}"
        else:
            error = None
        text = "\n".join(p.rstrip("\n") for p in parts) if parts else "(the program printed nothing)"
        return text, error


TOOL_CLASS = PythonTool  # its parameters and default description, known without building a tool


def from_config(name: str, cfg: ToolConfig, ctx: ToolContext) -> PythonTool:
    mode = check_sandbox(cfg.sandbox)  # fail at start, with the fix named, rather than on the first call
    logger.info("python tool %s: sandbox mode %s", name, mode)
    return PythonTool(
        name=name,
        description=cfg.description,
        limits=SandboxLimits.from_tool_config(cfg),
        pricing=Pricing(per_call=cfg.price_per_call),
    )
