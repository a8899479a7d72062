"""The QA world of toolscale-mini as an environment: the user asks one question (with their preference, if any)
and says nothing more; the policy's calls go to the configured tools (tool executors); the episode ends when a
final-answer tool (`answer`, or an expert with `final_answer: true`) succeeds, its result the final answer.
A turn without a tool call is an error the policy is shown (nobody reads a message). Stateless: an episode holds only its task."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from orchestra_rl.envs.base import Environment, Episode, Observation
from orchestra_rl.types import Task, ToolCall, ToolCallRecord, ToolResult

# The QA world's answer to a turn without a tool call.
NO_CALL = ('no tool call found: call one tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call>; '
           "finish with the answer tool")

CallTool = Callable[[str, dict, str], Awaitable[ToolResult]]  # (tool name, arguments, the user's task)


def question_with_preference(task: Task) -> str:
    """The user's message: the question, and the preference they state in words."""
    if task.preference_text:
        return f"{task.question}\n\nUser preference: {task.preference_text}"
    return task.question


class QAEnvironment(Environment):
    def __init__(self, call_tool: CallTool, final_tools: set[str]):
        self.call_tool, self.final_tools = call_tool, set(final_tools)

    async def reset(self, task: Task, group_index: int) -> Episode:
        return QAEpisode(self, question_with_preference(task))


class QAEpisode(Episode):
    def __init__(self, env: QAEnvironment, opening: str):
        self.env, self.opening = env, opening

    async def _call(self, turn_index: int, call: ToolCall) -> ToolCallRecord:
        # Experts with include_task are handed the user's message along with the orchestrator's question.
        result = await self.env.call_tool(call.name, call.arguments, self.opening)
        return ToolCallRecord(turn=turn_index, name=call.name, arguments=call.arguments, result=result)

    async def step(self, turn_index: int, message: str, calls: list[ToolCall]) -> Observation:
        if not calls:  # the user only reads the final answer: every turn must call a tool
            return Observation(error=NO_CALL)
        records = list(await asyncio.gather(*(self._call(turn_index, c) for c in calls)))
        answer = next((c for c in records if c.name in self.env.final_tools and c.result.error is None), None)
        if answer is None:
            return Observation(records)
        return Observation(records, done=True, final_answer=answer.result.text)
