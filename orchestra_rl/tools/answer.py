"""The answer tool: the orchestrator's final answer to the user's task.

A successful call ends the trajectory. The agent loop does that, for every tool that config.final_tool_names
lists (answer tools, and llm tools with final_answer); the tool itself only echoes the answer back, so the answer
is recorded like any other tool call.
"""

from __future__ import annotations

from typing import Any

from orchestra_rl.config import ToolConfig
from orchestra_rl.tools.base import Pricing, Tool, ToolContext
from orchestra_rl.types import ToolResult


class AnswerTool(Tool):
    parameters = {
        "type": "object",
        "properties": {"answer": {"type": "string", "description": "The final answer, as short as possible."}},
        "required": ["answer"],
        "additionalProperties": False,
    }

    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        return ToolResult(text=arguments["answer"], cost_usd=self.pricing.per_call)


TOOL_CLASS = AnswerTool  # its parameters and default description, known without building a tool


def from_config(name: str, cfg: ToolConfig, ctx: ToolContext) -> AnswerTool:
    return AnswerTool(name, cfg.description, Pricing(per_call=cfg.price_per_call))
