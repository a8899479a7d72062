"""RolloutWorker: a Ray actor that owns one vLLM engine and runs many agent loops on it concurrently."""

from __future__ import annotations

import asyncio
import os
import time

import ray

from orchestra_rl.config import Config
from orchestra_rl.envs.sources import make_environment
from orchestra_rl.rollout.agent_loop import AgentLoop, Engine
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import Generation, PolicyEngine
from orchestra_rl.rollout.parser import tool_call_regex
from orchestra_rl.tools.base import Pricing
from orchestra_rl.tools.executor import ToolPool
from orchestra_rl.types import Task, Trajectory


def make_agent_loop(cfg: Config, engine: Engine, chat: ChatFormat, executors: list) -> AgentLoop:
    """The agent loop as a rollout worker runs it, and the scripted demonstrations too: the configured
    environments (envs/sources.py; tool calls through the executors), the orchestrator's own tokens priced,
    constrained decoding if configured."""
    constrained = set(cfg.rollout.constrained_tools)
    constrained_schemas = [s for s in chat.tool_schemas if s["function"]["name"] in constrained]
    env = make_environment(cfg, ToolPool(executors).call, chat.tool_schemas)
    return AgentLoop(engine, env, chat, cfg.rollout, Pricing(cfg.model.price_in_per_mtok, cfg.model.price_out_per_mtok),
                     guided_regex=tool_call_regex(constrained_schemas) if constrained else None)


class RolloutWorker:
    def __init__(self, cfg: Config, model_path: str, executors: list, tool_schemas: list[dict]):
        from transformers import AutoTokenizer

        self.engine = PolicyEngine(model_path, cfg.rollout.engine, cfg.model.dtype)
        self.sampling = {"temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p}
        chat = ChatFormat(AutoTokenizer.from_pretrained(model_path), cfg.rollout.system_prompt, tool_schemas)
        self.loop = make_agent_loop(cfg, self.engine, chat, executors)

    def ready(self) -> bool:
        return True

    async def rollout(self, tasks: list[Task], group_indices: list[int],
                      lockstep: bool) -> tuple[int, list[Trajectory]]:
        """One trajectory per (task, group index); all run concurrently on this worker's engine. The schedule
        (lockstep or not) is the rollout manager's. Returns their count too, a small first return that tells the
        manager the call succeeded without fetching the trajectories."""
        trajectories = await self.loop.run_batch(tasks, group_indices, lockstep=lockstep)
        return len(trajectories), trajectories

    async def generate(self, prompts: list[list[int]], n: int, max_tokens: int) -> list[list[Generation]]:
        """n single-turn samples of each prompt (no tools, no parsing: `bench step`), all in flight at once."""
        samples = [self.engine.generate(p, max_tokens, **self.sampling) for p in prompts for _ in range(n)]
        done = await asyncio.gather(*samples)
        return [list(done[i:i + n]) for i in range(0, len(done), n)]

    def pid(self) -> int:
        """This worker's process (a fault test kills it)."""
        return os.getpid()

    async def receive_weights(self, method: str, *args, version: int | None = None) -> dict[str, float]:
        """Load new policy weights through `WeightReceiver.<method>` (orchestra_rl/weight_sync.py), as policy
        `version` (default: the next), once the turns being generated finish on the old ones."""
        start = time.perf_counter()
        n = await self.engine.load_weights(method, *args, version=version)
        return {"tensors": n, "seconds": time.perf_counter() - start}

    def set_policy_version(self, version: int) -> None:
        """Label the engine's current weights `version` (RolloutManager.set_policy_version)."""
        self.engine.gate.version = version

    async def join_weight_sync(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        await self.engine.join_weight_sync(host, port, rank, world_size, backend)

    async def prompt_logprobs(self, token_ids: list[int]) -> list[float]:
        return await self.engine.prompt_logprobs(token_ids)

    async def shutdown(self) -> None:
        try:
            await self.loop.env.close()  # on this actor's event loop, the one its episodes ran on
        finally:
            self.engine.shutdown()


def make_rollout_worker(cfg: Config, model_path: str, executors: list,
                        tool_schemas: list[dict]) -> ray.actor.ActorHandle:
    r = cfg.rollout
    # max_concurrency: every trajectory group of a batch is an in-flight call on this async actor.
    return ray.remote(RolloutWorker).options(
        num_cpus=r.num_cpus_per_worker, num_gpus=r.num_gpus_per_worker, max_concurrency=10_000,
    ).remote(cfg, model_path, executors, tool_schemas)
