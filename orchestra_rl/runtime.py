"""Bring the actor system up and down: Ray, the task world, simulated experts, tool executors, rollout workers.

`eval`, `bench` and `train` all start the same system through `Runtime`, so the default embedded run and a GPU
cluster differ only by configuration (cluster address, resources, model, engine settings).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import ray

from orchestra_rl.config import Config
from orchestra_rl.data.world import build_world
from orchestra_rl.models.tiny import resolve_model_path
from orchestra_rl.rollout.worker import make_rollout_worker
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.executor import make_executor
from orchestra_rl.types import Task, Trajectory

log = logging.getLogger(__name__)

# Actors inherit these: keep vLLM's per-request logging out of the driver's console.
ACTOR_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


def init_ray(cfg: Config) -> bool:
    """Start an embedded Ray (empty cluster.address) or attach to one. Returns True if this call started it."""
    if ray.is_initialized():
        return False
    c = cfg.cluster
    if c.address:
        ray.init(address=c.address, namespace=c.namespace, runtime_env={"env_vars": ACTOR_ENV})
        return True
    # Locally, actors are mostly waiting on I/O or each other: schedule by logical CPUs, at least 4.
    num_cpus = c.num_cpus if c.num_cpus is not None else max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, num_gpus=c.num_gpus, namespace=c.namespace, include_dashboard=False,
             runtime_env={"env_vars": ACTOR_ENV}, logging_level=logging.WARNING)
    return True


class Runtime:
    """The running system. Use as a context manager; `close()` stops everything it started."""

    def __init__(self, cfg: Config, model_path: str | None = None):
        self.cfg = cfg
        self.started_ray = init_ray(cfg)
        self.world_dir: Path = build_world(cfg.data)
        self.model_path = model_path or resolve_model_path(cfg.model)
        self.experts_url = ""
        uses_experts = any(t.enabled and t.kind == "llm" and t.base_url == "experts" for t in cfg.tools.tools.values())
        if uses_experts and cfg.serve.enabled:
            from orchestra_rl.serve.experts import start_experts

            self.experts_url = start_experts(cfg, self.world_dir)
        ctx = ToolContext(world_dir=str(self.world_dir), experts_base_url=self.experts_url)
        self.executors = [make_executor(cfg.tools, ctx) for _ in range(cfg.tools.num_executors)]
        self.tool_schemas: list[dict] = ray.get(self.executors[0].schemas.remote())
        final_tools = [n for n, t in cfg.tools.tools.items() if t.enabled and t.kind == "answer"]
        self.workers = [make_rollout_worker(cfg, self.model_path, self.executors, self.tool_schemas, final_tools)
                        for _ in range(cfg.rollout.num_workers)]
        ray.get([w.ready.remote() for w in self.workers])

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rollout(self, tasks: list[Task], group_size: int, seed: int, lockstep: bool | None = None,
                on_done: Callable[[list[Trajectory]], None] | None = None) -> list[Trajectory]:
        """group_size trajectories per task, spread over the workers; returned grouped in task order.

        Async mode sends one call per task group (fine-grained progress through `on_done`). Lockstep sends one
        call per worker, so its turn barrier spans the worker's whole batch, as in the reference implementation.
        """
        if lockstep is None:
            lockstep = self.cfg.rollout.mode == "lockstep"
        items = [(task, g) for task in tasks for g in range(group_size)]
        n = len(self.workers)
        chunks = ([items[i * group_size:(i + 1) * group_size] for i in range(len(tasks))] if not lockstep
                  else [items[w::n] for w in range(n)])
        pending = {}
        for c, chunk in enumerate(chunks):
            if chunk:
                ref = self.workers[c % n].rollout.remote([t for t, _ in chunk], [g for _, g in chunk],
                                                         seed + c * len(chunk), lockstep)
                pending[ref] = c
        finished: list[Trajectory] = []
        refs = list(pending)
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            trajectories = ray.get(done[0])
            finished += trajectories
            if on_done:
                on_done(trajectories)
        order = {(t.task_id, g): i for i, (t, g) in enumerate(items)}
        return sorted(finished, key=lambda tr: order[(tr.task_id, tr.group_index)])

    def close(self) -> None:
        for w in getattr(self, "workers", []):
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as e:
                log.warning("rollout worker did not shut down cleanly: %s", e)
            ray.kill(w)
        for e in getattr(self, "executors", []):
            ray.kill(e)
        if self.experts_url:
            from orchestra_rl.serve.experts import stop_experts

            stop_experts()
        if self.started_ray:
            ray.shutdown()
