"""The records that flow through the system: task -> rollout -> (reward -> learner).

One `Trajectory` per rollout carries everything a later stage needs: the exact token ids the policy sampled,
their sampling logprobs, a loss mask (1 on policy tokens, 0 on prompt/tool tokens), every tool call with its
price and latency, and the final answer. No later stage ever calls back into an earlier one.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

UNKNOWN_TOOL = "unknown_tool"  # how summaries count a call to a tool name that is not configured
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # how the chat templates delimit a call


@dataclass
class Task:
    """One verifiable task of the task world."""

    task_id: str
    family: str  # arithmetic | lookup | multihop | hard (toolscale-mini), or any dataset-defined family
    question: str
    answer: str
    # Per-task user preference: weights for "cost", "latency" and any tool name (see docs/rewards.md).
    preference: dict[str, float] = field(default_factory=dict)
    preference_text: str = ""  # the same preference in words, shown to the orchestrator
    metadata: dict[str, Any] = field(default_factory=dict)
    env: str = "qa"  # the environment that runs it: a key of the config's `env` (envs/sources.py)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Task":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass
class ToolCall:
    """A tool call as parsed from the orchestrator's output (name/arguments may be invalid: see `error`)."""

    name: str
    arguments: dict[str, Any]
    raw: str = ""  # the text between <tool_call> and </tool_call>

    def render(self) -> str:
        """The call exactly as the chat template renders an assistant's call (what a scripted policy writes)."""
        return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': self.name, 'arguments': self.arguments})}\n{TOOL_CALL_CLOSE}"


@dataclass
class ToolResult:
    """What a tool returns. `error` is set when the call failed; `text` is then what the policy is shown."""

    text: str
    cost_usd: float = 0.0
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    error: str | None = None
    # The endpoint reported no token usage: tokens_in/out (and the cost) are estimated from the text.
    usage_estimated: bool = False
    # What the endpoint reported paying for the call itself (a served orchestrator: its tools, experts and own
    # tokens), included in cost_usd.
    reported_cost_usd: float = 0.0


@dataclass
class ToolCallRecord:
    """A tool call made during a rollout, with its outcome; kept on the trajectory for reward and logging."""

    turn: int
    name: str
    arguments: dict[str, Any]
    result: ToolResult


@dataclass
class Turn:
    """One orchestrator turn: the tokens it sampled and the tool calls they contained."""

    text: str
    num_tokens: int
    finish_reason: str  # "tool_call" | "stop" | "length"
    calls: list[ToolCallRecord] = field(default_factory=list)
    parse_error: str | None = None
    policy_version: int = 0  # the weights that sampled this turn: those after this many training steps


@dataclass
class Trajectory:
    task_id: str
    family: str
    group_index: int  # index of this rollout within the task's group of n
    token_ids: list[int]  # prompt + every appended segment, exactly as the policy saw them
    logprobs: list[float]  # sampling logprob of each token; 0.0 where loss_mask == 0
    loss_mask: list[int]  # 1 on tokens the policy sampled, 0 on prompt / template / tool-response tokens
    prompt_length: int
    turns: list[Turn]
    final_answer: str | None
    # "answer" | "done" (the environment ended it without an answer) | "max_turns" | "token_budget" | "error" (it
    # failed: `error` says why; it is never trained on)
    stop_reason: str
    policy_tokens_in: int = 0  # tokens the orchestrator read across its turns (for pricing its own calls)
    policy_cost_usd: float = 0.0
    wall_time_s: float = 0.0
    error: str | None = None  # why the trajectory failed (stop_reason "error"): a dead actor, a broken world
    # The environment's own grade of the episode (τ²-Bench's evaluator), the outcome the reward mixes; None: the
    # reward's verifiers judge final_answer. env_info: the grader's details.
    env_outcome: float | None = None
    env_info: dict[str, Any] = field(default_factory=dict)
    # Filled by the reward actor: the scalar reward and every component of it (outcome, cost, latency, ...).
    reward: float | None = None
    reward_components: dict[str, float] = field(default_factory=dict)

    @property
    def tool_calls(self) -> list[ToolCallRecord]:
        return [c for t in self.turns for c in t.calls]

    @property
    def policy_version(self) -> int:
        """The oldest weights that sampled any of its tokens (turns sampled after a weight sync are newer)."""
        return min((t.policy_version for t in self.turns), default=0)

    @property
    def tool_cost_usd(self) -> float:
        return sum(c.result.cost_usd for c in self.tool_calls)

    @property
    def cost_usd(self) -> float:
        """Complete dollar cost: every tool/expert call plus the orchestrator's own tokens."""
        return self.tool_cost_usd + self.policy_cost_usd

    @property
    def latency_s(self) -> float:
        """Wall time spent in tool calls (calls of one turn run concurrently: the slowest counts)."""
        per_turn: dict[int, float] = {}
        for c in self.tool_calls:
            per_turn[c.turn] = max(per_turn.get(c.turn, 0.0), c.result.latency_s)
        return sum(per_turn.values())

    @property
    def num_policy_tokens(self) -> int:
        return sum(self.loss_mask)

    def tool_counts(self, known: Collection[str] | None = None) -> dict[str, int]:
        """Calls per tool name. With `known`, a name outside it (the policy made it up) counts as UNKNOWN_TOOL,
        so summaries and metric keys do not fill up with invented names."""
        counts: dict[str, int] = {}
        for c in self.tool_calls:
            name = c.name if known is None or c.name in known else UNKNOWN_TOOL
            counts[name] = counts.get(name, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainSample:
    """What the learner trains on: one trajectory's tokens with its advantage (GRPO) or reward (PPO)."""

    token_ids: list[int]
    loss_mask: list[int]  # 1 on policy tokens
    old_logprobs: list[float]  # behaviour (rollout) logprobs aligned with token_ids; 0 where loss_mask == 0
    advantage: float = 0.0  # GRPO: the trajectory's advantage, broadcast over its policy tokens
    reward: float = 0.0  # PPO: the scalar reward, placed on the last policy token for GAE


def in_task_order(trajectories: list[Trajectory], tasks: list[Task]) -> list[Trajectory]:
    """Grouped by task in the order of `tasks`, each group by group index: the same order whichever call
    finished first, so a step's samples (and a resumed run's) do not depend on timing."""
    position = {t.task_id: i for i, t in enumerate(tasks)}
    return sorted(trajectories, key=lambda tr: (position[tr.task_id], tr.group_index))
