"""The environment role: the world one trajectory acts in. The agent loop drives an Episode per trajectory:

    episode = await env.reset(task, group_index)   # this trajectory's own state: nothing shared with its group
    the prompt: the system prompt and episode.opening (the user's first message)
    each policy turn: observation = await episode.step(turn_index, calls)
        → the calls with their results (rendered as tool messages), the user's next message if the world has a
          user, and whether the episode is over (with its final answer)
    await episode.close()                          # state released: on the last turn, and on any failure

Everything an environment does is awaited on the rollout worker's event loop, so an implementation must not
block it: remote work is awaited (tool executors, HTTP), local work that takes time goes to a thread. The policy's
sampled tokens stay the only tokens it is trained on: what an environment says (tool results, user turns) is
rendered by the chat template and masked out (rollout/chat.py).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from orchestra_rl.types import Task, ToolCall, ToolCallRecord


@dataclass
class Observation:
    """What the world answers to one policy turn."""

    calls: list[ToolCallRecord] = field(default_factory=list)  # the turn's calls with their results, in order
    user_message: str | None = None  # the user's next turn (None: tool responses only)
    done: bool = False  # the episode is over; the policy gets no further turn
    final_answer: str | None = None  # the answer the episode ended with, if any


class Episode(abc.ABC):
    """One trajectory's run through an environment."""

    opening: str  # the user's first message

    @abc.abstractmethod
    async def step(self, turn_index: int, calls: list[ToolCall]) -> Observation:
        """Execute the policy's well-formed tool calls of one turn against this episode's state."""

    async def close(self) -> None:
        """Release this episode's state. Called once, whether the episode ended or failed."""


class Environment(abc.ABC):
    @abc.abstractmethod
    async def reset(self, task: Task, group_index: int) -> Episode:
        """A fresh episode of `task`: every rollout of a group gets its own."""
