"""RewardActor: scores a batch of trajectories — outcome per trajectory, then efficiency and preference per group.

An async Ray actor (make_reward_actor), or a plain object used directly. With an LLM judge configured
(reward.judge_tool), the judge calls of a batch run concurrently, up to the judge tool's max_concurrency.
"""

from __future__ import annotations

import asyncio
import dataclasses
from statistics import fmean

import ray

from orchestra_rl.config import Config, RewardConfig, ToolConfig
from orchestra_rl.metrics import argument_fidelity, copying_tools, first_calls, trajectory_stats
from orchestra_rl.reward.mix import mix_group
from orchestra_rl.reward.outcome import judge, outcome_score
from orchestra_rl.tools import llm
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.types import Task, Trajectory, in_task_order


class RewardActor:
    def __init__(self, cfg: RewardConfig, tool_names: list[str], judge_cfg: ToolConfig | None = None,
                 ctx: ToolContext | None = None, copying: dict[str, str] | None = None):
        """`cfg` is validated (config.validate); `judge_cfg` is the ToolConfig of cfg.judge_tool, if one is named;
        `copying`: the tools whose argument fidelity a batch's metrics report (metrics.copying_tools)."""
        self.cfg, self.tool_names, self.copying = cfg, list(tool_names), dict(copying or {})
        self.judge_tool: llm.LLMTool | None = None
        if judge_cfg is not None:
            self.judge_tool = llm.from_config(cfg.judge_tool, judge_cfg, ctx or ToolContext())
            self.judge_slots = asyncio.Semaphore(judge_cfg.max_concurrency)

    async def outcome(self, trajectory: Trajectory, task: Task) -> tuple[float, dict[str, float]]:
        """o_i, and the components the judge adds (its cost, and whether it failed and the rules decided)."""
        if self.judge_tool is None:
            return outcome_score(trajectory, task), {}
        async with self.judge_slots:
            score, result = await judge(trajectory, task, self.judge_tool)
        return score, {"judge_cost_usd": result.cost_usd, "judge_failed": float(result.error is not None)}

    async def score(self, trajectories: list[Trajectory], tasks: dict[str, Task]) -> list[Trajectory]:
        """Scored copies of `trajectories`, in the same order. Groups are formed by task_id, so a batch may
        hold several tasks' groups in any order."""
        missing = sorted({t.task_id for t in trajectories} - tasks.keys())
        if missing:
            raise ValueError(f"no Task given for trajectories of task id(s): {', '.join(missing)}")
        judged = await asyncio.gather(*(self.outcome(t, tasks[t.task_id]) for t in trajectories))
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(trajectories):
            groups.setdefault(t.task_id, []).append(i)
        scored: list[Trajectory] = list(trajectories)
        for task_id, members in groups.items():
            group = [dataclasses.replace(trajectories[i], reward_components={
                **trajectories[i].reward_components, **judged[i][1]}) for i in members]
            outcomes = [judged[i][0] for i in members]
            for i, t in zip(members, mix_group(group, outcomes, tasks[task_id], self.cfg, self.tool_names)):
                scored[i] = t
        return scored

    async def score_rollouts(self, rollouts: list[ray.ObjectRef], tasks: list[Task],
                             tool_names: list[str]) -> tuple[list[Trajectory], dict[str, float]]:
        """The training step's scoring, fetched from the object store here: `rollouts` are the rollout manager's
        references (each to a list of trajectories). Returns the scored trajectories in task order and the
        batch's metrics (call with num_returns=2: the driver takes only the metrics)."""
        trajectories = in_task_order([t for chunk in await asyncio.gather(*rollouts) for t in chunk], tasks)
        scored = await self.score(trajectories, {t.task_id: t for t in tasks})
        return scored, batch_metrics(scored, tool_names, {t.task_id: t.question for t in tasks}, self.copying)

    async def close(self) -> None:
        if self.judge_tool is not None:
            await self.judge_tool.close()


def summary(scored: list[Trajectory]) -> dict[str, float]:
    """Mean of every reward component over the batch, for logging (the per-task preference weights left out).
    A plain function, so the driver need not ship a batch back to the actor to log it."""
    keys = sorted({k for t in scored for k in t.reward_components if not k.startswith("pref_")})
    means = {}
    for k in keys:
        values = [t.reward_components[k] for t in scored if k in t.reward_components]
        means[k] = sum(values) / len(values)
    return means


def batch_metrics(scored: list[Trajectory], tool_names: list[str], questions: dict[str, str] | None = None,
                  copying: dict[str, str] | None = None) -> dict[str, float]:
    """What a training step logs of its batch: the trajectory statistics, the reward and its components, the
    tool mix (calls per trajectory), the routing per family (route/FAMILY/TOOL: the share of first calls;
    route_outcome/FAMILY/TOOL: their mean outcome, what each route earns the policy as it is), and the argument
    fidelity of the `copying` tools' calls when there were any."""
    stats = trajectory_stats(scored, tool_names)
    metrics = {"rollout/reward": fmean(t.reward for t in scored)}
    fidelity = argument_fidelity(scored, questions or {}, copying or {})
    if fidelity is not None:
        metrics["rollout/argument_fidelity"] = fidelity
    metrics |= {f"rollout/{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
    metrics |= {f"reward/{k}": v for k, v in summary(scored).items()}
    for family, routes in first_calls(scored, tool_names).items():
        for name, route in routes.items():
            metrics[f"route/{family}/{name}"] = route["share"]
            if route["outcome"] is not None:
                metrics[f"route_outcome/{family}/{name}"] = route["outcome"]
    return metrics | {f"tools/{name}": v for name, v in stats["tool_calls_per_trajectory"].items()}


def make_reward_actor(cfg: Config, ctx: ToolContext) -> ray.actor.ActorHandle:
    """Start a RewardActor. Every configured tool name (enabled or not) is a valid preference key."""
    judge_cfg = cfg.tools.tools[cfg.reward.judge_tool] if cfg.reward.judge_tool else None
    # num_cpus=0: the actor does arithmetic and waits on the judge; it should not take a CPU from a worker.
    return ray.remote(RewardActor).options(num_cpus=0).remote(cfg.reward, list(cfg.tools.tools), judge_cfg, ctx,
                                                              copying_tools(cfg.tools.tools))
