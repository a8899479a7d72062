"""The one tool protocol, the registry of tool kinds, and pricing.

A tool has an OpenAI function schema and an async `call(arguments) -> ToolResult`. Tools are declared in
`conf/tools/*.yaml` by *kind* (python, search, llm, answer, mcp), so a new tool of a known kind — another expert
model behind an OpenAI-compatible endpoint, say — is added by config alone.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Any

import jsonschema

from orchestra_rl.config import ConfigError
from orchestra_rl.types import ToolResult


@dataclass(frozen=True)
class Pricing:
    """Dollar prices: per million input/output tokens, plus a flat price per call."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_call: float = 0.0

    def cost(self, tokens_in: int = 0, tokens_out: int = 0) -> float:
        return (tokens_in * self.input_per_mtok + tokens_out * self.output_per_mtok) / 1e6 + self.per_call


def function_schema(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function-calling schema."""
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


class Tool(abc.ABC):
    """Base of every tool. Subclasses set `parameters` (JSON schema) and implement `run`."""

    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    default_description = ""  # shown when the config gives none

    def __init__(self, name: str, description: str, pricing: Pricing = Pricing(), entry: str = ""):
        self.name = name
        self.description = description
        self.pricing = pricing
        # The tools.tools key that declared this tool (its concurrency and deadline): the tool's own name, except for
        # the tools an MCP server entry contributes.
        self.entry = entry or name

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema shown to the orchestrator."""
        return function_schema(self.name, self.description, self.parameters)

    def argument_error(self, arguments: Any) -> str | None:
        """A message the policy can learn from when `arguments` do not fit the schema, else None."""
        try:
            jsonschema.validate(arguments, self.parameters)
        except jsonschema.ValidationError as e:
            where = "/".join(str(p) for p in e.absolute_path) or "arguments"
            return f"invalid arguments for tool '{self.name}' at {where}: {e.message}"
        return None

    async def call(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        """`task` is the user's task the orchestrator is solving; tools configured with `include_task` (experts)
        receive it with the call, as ToolOrchestra's expert models receive the problem."""
        error = self.argument_error(arguments)
        if error:
            return ToolResult(text=f"Error: {error}", error=error)
        return await self.run(arguments, task)

    @abc.abstractmethod
    async def run(self, arguments: dict[str, Any], task: str = "") -> ToolResult:
        """Execute a call whose arguments already match `parameters`."""

    async def close(self) -> None:
        """Release clients/processes; most tools hold none."""


def cut_reply(text: str, max_chars: int) -> str:
    """A remote reply as it enters the trajectory: at most `max_chars`, and said so when cut."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[reply cut: {max_chars} of {len(text)} characters]"


# Each tool module exposes `from_config(name, ToolConfig, ToolContext) -> Tool`, or, for a kind whose one entry
# contributes several tools (mcp), `tools_from_config(...) -> dict[str, Tool]`; orchestra_rl.tools.registry maps kinds
# to them.


@dataclass(frozen=True)
class ToolContext:
    """What tool constructors may need beyond their own ToolConfig."""

    world_dir: str = ""  # the built task world (corpus.jsonl for search)
    experts_base_url: str = ""  # where base_url "experts" points, e.g. http://127.0.0.1:8765/v1


def api_key_from_env(tool_name: str, env_var: str) -> str:
    """The API key in the environment variable a tool's api_key_env names. Checked at use, not in config.validate:
    whether the variable is set is a fact of the machine the tool runs on."""
    key = os.environ.get(env_var, "")
    if not key:
        raise ConfigError(f"tools.tools.{tool_name}.api_key_env",
                          f"environment variable {env_var} is not set (it must hold the API key)")
    return key
