"""The environment role: the world one trajectory acts in. The agent loop drives an Episode per trajectory:

    episode = await env.reset(task, group_index)   # this trajectory's own state: nothing shared with its group
    the prompt: episode.system_prompt (or the configured one), episode.tool_schemas (or the configured tools),
                episode.opening (the user's first message)
    each policy turn: observation = await episode.step(turn_index, message, calls)
        → the calls with their results (rendered as tool messages), the user's next message if the world has a
          user, and whether the episode is over (with its final answer)
    grade = await episode.grade(stop_reason)      # the world's own grader, if it has one (τ²-Bench's evaluator)
    await episode.close()                          # state released: on the last turn, and on any failure

Everything an environment does is awaited on the rollout worker's event loop, so an implementation must not
block it: remote work is awaited (tool executors, HTTP), local work that takes time goes to a thread. The policy's
sampled tokens stay the only tokens it is trained on: what an environment says (tool results, user turns) is
rendered by the chat template and masked out (rollout/chat.py).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import Any

from orchestra_rl.config import EndpointConfig
from orchestra_rl.types import Task, ToolCall, ToolCallRecord, ToolResult


@dataclass
class Observation:
    """What the world answers to one policy turn."""

    calls: list[ToolCallRecord] = field(default_factory=list)  # the turn's calls with their results, in order
    user_message: str | None = None  # the user's next turn (None: tool responses only)
    done: bool = False  # the episode is over; the policy gets no further turn
    final_answer: str | None = None  # the answer the episode ended with, if any
    # The turn broke a rule of this world (the QA world: no tool call): shown to the policy as an error tool
    # response and counted as a parse error.
    error: str | None = None


@dataclass
class Grade:
    """A world's own verdict on a finished episode: the outcome o ∈ [0, 1] the reward mixes (docs/rewards.md)."""

    outcome: float
    info: dict[str, Any] = field(default_factory=dict)  # the grader's details (JSON-able), kept on the trajectory


class Episode(abc.ABC):
    """One trajectory's run through an environment."""

    opening: str  # the user's first message
    system_prompt: str | None = None  # this episode's system prompt; None: rollout.system_prompt
    tool_schemas: list[dict] | None = None  # this episode's tools (OpenAI schemas); None: the configured tools

    @abc.abstractmethod
    async def step(self, turn_index: int, message: str, calls: list[ToolCall]) -> Observation:
        """The policy's turn against this episode's state: `message` is its text outside tool calls, `calls` its
        well-formed tool calls (possibly none)."""

    async def grade(self, stop_reason: str) -> Grade | None:
        """The world's verdict once the episode is over (`stop_reason` as on the trajectory). None: the world
        has no grader of its own, and the reward's verifiers judge the final answer (reward/outcome.py)."""
        return None

    async def close(self) -> None:
        """Release this episode's state. Called once, whether the episode ended or failed."""


class Environment(abc.ABC):
    @abc.abstractmethod
    async def reset(self, task: Task, group_index: int) -> Episode:
        """A fresh episode of `task`: every rollout of a group gets its own."""

    async def close(self) -> None:
        """Release what the environment holds across episodes (a judge's HTTP client); called once, by the
        owner of the event loop that ran the episodes, when no episode is left."""


# Shared by the worlds that bring their own tools and policy (a domain folder, a τ²-Bench domain).

def offered_tools(env_name: str, world: str, world_schemas: list[dict], configured: list[dict],
                  final_tools: set[str]) -> list[dict]:
    """The world's tools, then the configured ones except the final-answer tools (such an episode ends by
    conversation): the policy may still ask an expert. A configured tool with a world tool's name is an error."""
    kept = [s for s in configured if s["function"]["name"] not in final_tools]
    clash = sorted({s["function"]["name"] for s in world_schemas} & {s["function"]["name"] for s in kept})
    if clash:
        raise ValueError(f"env.{env_name}: configured tool(s) {', '.join(clash)} have the name of a tool of "
                         f"{world}; rename or disable them")
    return world_schemas + kept


def policy_prompt(instructions: str, policy: str) -> str:
    return f"{instructions}\n\n<policy>\n{policy}\n</policy>"


async def call_configured(call: ToolCall, known: set[str], call_tool: Any, task_text: str) -> ToolResult:
    """A call that is not the world's own: a configured tool through the executors, or, for a name nobody
    offered, an error result listing the known tools."""
    if call.name not in known:
        return ToolResult(f"Error: unknown tool {call.name!r}; known tools: {', '.join(sorted(known))}",
                          error=f"unknown tool {call.name!r}")
    return await call_tool(call.name, call.arguments, task_text)


def endpoint_api_key(endpoint: EndpointConfig, key: str) -> str:
    """The key of an endpoint the environment calls (its `api_key_env`), "EMPTY" for a keyless local server; a
    variable that is not set is an error naming `key`, raised before any episode starts."""
    if not endpoint.api_key_env:
        return "EMPTY"
    api_key = os.environ.get(endpoint.api_key_env, "")
    if not api_key:
        raise ValueError(f"{key}.api_key_env: the environment variable {endpoint.api_key_env} is not set")
    return api_key
