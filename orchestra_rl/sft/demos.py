"""Demonstrations for the SFT warm start: the scripted policy through the real agent loop and real tools.

The tools run as in training (ToolExecutor actors: python sandbox, BM25 search, simulated experts on Ray Serve),
so every tool response a demonstration shows is one the policy will see in RL. Only the experts' latency is
switched off: it shapes no demonstration.

Kept: demonstrations that end with an answer call (every scripted turn is a well-formed call). By default a
wrong final answer is kept too (an expert's wrong answer, faithfully copied, is still the behaviour to
imitate, and dropping it would tilt the tool mix toward accurate tools: routing is RL's job);
`sft.only_correct=true` keeps only correct ones, filling the quota with further group indices.

Environments with golden actions (τ²-Bench, domain folders) demonstrate themselves: each train task's golden replay (its golden
tool calls, one per turn, then the closing message; envs/sources.golden_turns) through the same loop, with the
environment's own tools and user, kept where the environment's grader gives it full marks.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from orchestra_rl.config import Config, env_sources
from orchestra_rl.data.sampler import interleave_families
from orchestra_rl.data.world import load_tasks
from orchestra_rl.reward.outcome import is_correct
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.worker import make_agent_loop
from orchestra_rl.system import System
from orchestra_rl.sft.scripted import ScriptedPolicy
from orchestra_rl.types import Task, Trajectory

# Attempts allowed per demonstration asked for, when only correct ones are kept.
MAX_ATTEMPTS_PER_DEMO = 4


def tools_system(cfg: Config, model_path: str | None = None) -> System:
    """A System with the world, the experts (without latency) and the tool executors, but no rollout worker:
    the scripted policy needs no inference engine."""
    no_latency = copy.deepcopy(cfg)
    no_latency.serve.latency_scale = 0.0
    return System(no_latency, model_path, rollout=False)


def why_dropped(wrong: int, unanswered: list[Trajectory]) -> str:
    """Why attempts were not kept as demonstrations, counted: how many answered wrong (sft.only_correct), and of
    those without an answer their stop reasons and how many had a turn cut at rollout.max_tokens_per_turn (a
    scripted turn longer than the limit is cut there, as an engine's)."""
    reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(t.stop_reason for t in unanswered).most_common())
    cut = sum(any(turn.finish_reason == "length" for turn in t.turns) for t in unanswered)
    parts = [f"{wrong} answered wrong"] if wrong else []
    if unanswered:
        parts.append(f"without an answer: {reasons}"
                     + (f" ({cut} with a turn cut at rollout.max_tokens_per_turn: raise it)" if cut else ""))
    return "; ".join(parts)


def strategy_of(trajectory: Trajectory, answer_tool: str) -> str:
    return " -> ".join(c.name for c in trajectory.tool_calls if c.name != answer_tool) or "(none)"


class ScriptedRollout:
    """The scripted policy in the agent loop, with the system's tool executors: one AgentLoop per group index
    (the group index picks the strategy; the Engine protocol carries only tokens). `strategies`: the policy's
    table (default: the demonstrations' varied one)."""

    def __init__(self, cfg: Config, system: System, tasks: list[Task],
                 strategies: dict[str, list[tuple[str, ...]]] | None = None):
        self.cfg = cfg
        self.chat = ChatFormat(system.tokenizer, cfg.rollout.system_prompt, system.tool_schemas)
        self.policy = ScriptedPolicy.from_config(cfg, system.tokenizer, tasks, strategies)
        self.executors = system.executors
        self.loops: dict[int, AgentLoop] = {}

    def loop(self, group_index: int) -> AgentLoop:
        if group_index not in self.loops:  # the rollout worker's loop, with the scripted policy as its engine
            self.loops[group_index] = make_agent_loop(self.cfg, self.policy.for_group(group_index), self.chat,
                                                      self.executors)
        return self.loops[group_index]

    def run(self, items: list[tuple[Task, int]]) -> list[Trajectory]:
        """One trajectory per (task, group index), all concurrently; in the order of `items`."""
        async def run_all() -> list[Trajectory]:
            return list(await asyncio.gather(*(self.loop(g).run(task, g) for task, g in items)))

        return asyncio.run(run_all())


def generate_demos(cfg: Config, system: System, num_demos: int, only_correct: bool = False,
                   out_path: str | Path | None = None) -> list[Trajectory]:
    """`num_demos` demonstrations over the train split (families in turn, group index g on the g-th pass of
    the split), run concurrently through the agent loop with `system`'s tool executors; written as JSONL to
    `out_path`."""
    if num_demos <= 0:
        raise ValueError(f"num_demos must be > 0, got {num_demos}")
    tasks = interleave_families(load_tasks(system.world_dir, "train"))
    if not tasks:
        raise ValueError(f"the train split of {system.world_dir} has no tasks")
    scripted = ScriptedRollout(cfg, system, tasks)
    gold = {t.task_id: t.answer for t in tasks}
    kept: list[Trajectory] = []
    unanswered: list[Trajectory] = []
    wrong = 0  # answered, but not the gold answer (dropped with sft.only_correct)
    attempted = 0
    limit = num_demos * (MAX_ATTEMPTS_PER_DEMO if only_correct else 1)
    while len(kept) < num_demos and attempted < limit:
        n = min(num_demos - len(kept), limit - attempted)
        items = [(tasks[i % len(tasks)], i // len(tasks)) for i in range(attempted, attempted + n)]
        attempted += n
        for tr in scripted.run(items):
            correct = is_correct(tr.final_answer, gold[tr.task_id], tr.family)
            if tr.stop_reason == "answer" and (correct or not only_correct):
                kept.append(tr)
            elif tr.stop_reason != "answer":
                unanswered.append(tr)
            else:
                wrong += 1
    if len(kept) < num_demos:
        raise RuntimeError(f"only {len(kept)} of {num_demos} demonstrations succeeded in {attempted} attempts"
                           f"{'; ' + why_dropped(wrong, unanswered) if wrong or unanswered else ''}")
    if out_path is not None:
        write_demos(kept, tasks, scripted.policy.answer_tool, out_path)
    return kept


def environment_demos(cfg: Config, system: System) -> tuple[list[Trajectory], dict[str, Any]]:
    """The golden replays of the train tasks of every source with golden actions (τ²-Bench, domain folders) that
    its grader scores 1.0, and per source how many were replayed and kept. A replay gets the turns it needs
    (max_turns at least its length); the token budget stays the configured one, so no demonstration is longer
    than a rollout may be."""
    from transformers import AutoTokenizer

    from orchestra_rl.envs.sources import golden_turns, make_environment
    from orchestra_rl.rollout.engine import ScriptedEngine
    from orchestra_rl.tools.base import Pricing
    from orchestra_rl.tools.executor import ToolPool

    sources = {name for name, s in env_sources(cfg).items() if s.kind in ("tau2", "domain")}
    tasks = [t for t in system.tasks("train") if t.env in sources]
    if not tasks:
        return [], {}
    tokenizer = AutoTokenizer.from_pretrained(system.model_path)
    chat = ChatFormat(tokenizer, cfg.rollout.system_prompt, system.tool_schemas)
    env = make_environment(cfg, ToolPool(system.executors).call, system.tool_schemas)
    pricing = Pricing(cfg.model.price_in_per_mtok, cfg.model.price_out_per_mtok)

    async def replay(task: Task) -> Trajectory:
        turns = golden_turns(cfg, task)
        rollout = dataclasses.replace(cfg.rollout, max_turns=max(cfg.rollout.max_turns, len(turns)))
        return await AgentLoop(ScriptedEngine(tokenizer, turns), env, chat, rollout, pricing).run(task, 0)

    async def replay_all() -> list[Trajectory]:
        return list(await asyncio.gather(*(replay(t) for t in tasks)))

    replays = asyncio.run(replay_all())
    kept = [tr for tr in replays if tr.stop_reason == "done" and tr.env_outcome == 1.0]
    mix = {name: {"replayed": sum(t.env == name for t in tasks), "demos": sum(tr.family == name for tr in kept)}
           for name in sorted(sources)}
    return kept, mix


def write_demos(demos: list[Trajectory], tasks: list[Task], answer_tool: str, path: str | Path) -> None:
    """One JSON row per demonstration: what SFT trains on (token_ids, loss_mask) and what it shows."""
    gold = {t.task_id: t.answer for t in tasks}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for tr in demos:
            f.write(json.dumps({"task_id": tr.task_id, "family": tr.family, "group_index": tr.group_index,
                                "strategy": strategy_of(tr, answer_tool), "final_answer": tr.final_answer,
                                "correct": is_correct(tr.final_answer, gold[tr.task_id], tr.family),
                                "token_ids": tr.token_ids, "loss_mask": tr.loss_mask}) + "\n")


def write_environment_demos(demos: list[Trajectory], path: str | Path) -> None:
    with open(path, "w") as f:
        for tr in demos:
            f.write(json.dumps({"task_id": tr.task_id, "env": tr.family, "env_outcome": tr.env_outcome,
                                "turns": [t.text for t in tr.turns], "token_ids": tr.token_ids,
                                "loss_mask": tr.loss_mask}) + "\n")


def demo_mix(demos: list[Trajectory], tasks: list[Task], answer_tool: str) -> dict[str, Any]:
    """Per family: how many demonstrations use each strategy and how many end with the correct answer."""
    gold = {t.task_id: t.answer for t in tasks}
    mix: dict[str, Any] = {}
    for family in sorted({d.family for d in demos}):
        of_family = [d for d in demos if d.family == family]
        mix[family] = {
            "demos": len(of_family),
            "correct": sum(is_correct(d.final_answer, gold[d.task_id], d.family) for d in of_family),
            "strategies": dict(Counter(strategy_of(d, answer_tool) for d in of_family).most_common()),
        }
    return mix
