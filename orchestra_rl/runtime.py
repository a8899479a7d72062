"""Bring the actor system up and down: Ray, the task world, simulated experts, tool executors, rollout workers.

`eval`, `bench` and `train` all start the same system through `Runtime`, so the default embedded run and a GPU
cluster differ only by configuration (cluster address, resources, model, engine settings).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable

import ray

from orchestra_rl.config import Config, final_tool_names
from orchestra_rl.data.world import build_world
from orchestra_rl.models.tiny import resolve_model_path
from orchestra_rl.rollout.worker import make_rollout_worker
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.executor import make_executor
from orchestra_rl.types import Task, Trajectory

log = logging.getLogger(__name__)

# Actors inherit these: keep vLLM's per-request logging out of the driver's console.
ACTOR_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def init_ray(cfg: Config) -> bool:
    """Start an embedded Ray (empty cluster.address) or attach to one. Returns True if this call started it."""
    if ray.is_initialized():
        return False
    c = cfg.cluster
    if c.address:
        ray.init(address=c.address, namespace=c.namespace, runtime_env={"env_vars": ACTOR_ENV},
                 log_to_driver=c.log_to_driver)
        return True
    # Locally, actors are mostly waiting on I/O or each other: schedule by logical CPUs, at least 4.
    num_cpus = c.num_cpus if c.num_cpus is not None else max(4, os.cpu_count() or 1)
    # Actor output goes to Ray's session logs (/tmp/ray/session_latest/logs), not over the progress bar;
    # actor errors still reach the driver as exceptions. address="local": a new instance even when a cluster
    # from `ray start` runs on this machine (ray.init() with no address would attach to it).
    ray.init(address="local", num_cpus=num_cpus, num_gpus=c.num_gpus, namespace=c.namespace, include_dashboard=False,
             runtime_env={"env_vars": ACTOR_ENV}, logging_level=logging.WARNING, log_to_driver=c.log_to_driver)
    return True


class Runtime:
    """The running system. Use as a context manager; `close()` stops everything it started."""

    def __init__(self, cfg: Config, model_path: str | None = None, rollout_workers: bool = True):
        """rollout_workers=False: the world, experts and tool executors only (e.g. for scripted demonstrations,
        which need no inference engine)."""
        self.cfg = cfg
        self.started_ray = init_ray(cfg)
        self.world_dir: Path = build_world(cfg.data)
        self.model_path = model_path or resolve_model_path(cfg.model)
        self.experts_url = ""
        uses_experts = any(t.enabled and t.kind == "llm" and t.base_url == "experts" for t in cfg.tools.tools.values())
        if uses_experts and cfg.serve.enabled:
            from orchestra_rl.serve.experts import start_experts

            self.experts_url = start_experts(cfg, self.world_dir)
        self.tool_context = ToolContext(world_dir=str(self.world_dir), experts_base_url=self.experts_url)
        self.executors = [make_executor(cfg.tools, self.tool_context) for _ in range(cfg.tools.num_executors)]
        self.tool_schemas: list[dict] = ray.get(self.executors[0].schemas.remote())
        self.tool_names: list[str] = [s["function"]["name"] for s in self.tool_schemas]
        final_tools = sorted(final_tool_names(cfg))
        self.workers = [make_rollout_worker(cfg, self.model_path, self.executors, self.tool_schemas, final_tools)
                        for _ in range(cfg.rollout.num_workers if rollout_workers else 0)]
        ray.get([w.ready.remote() for w in self.workers])

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_path)

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rollout(self, tasks: list[Task], group_size: int, lockstep: bool | None = None, max_in_flight: int = 0,
                on_done: Callable[[list[Trajectory]], None] | None = None) -> list[Trajectory]:
        """group_size trajectories per task, spread over the workers; returned grouped in task order.

        Async: task groups stream through the workers, at most `max_in_flight` trajectories at once (0: all), a
        new group starting as soon as one finishes. Lockstep: waves of `max_in_flight` trajectories, each wave
        one call per worker whose turn barrier spans the wave, as in the reference implementation.
        `on_done` sees each finished chunk (progress bars, streaming metrics).
        """
        if lockstep is None:
            lockstep = self.cfg.rollout.mode == "lockstep"
        items = [(task, g) for task in tasks for g in range(group_size)]
        cap = max_in_flight or len(items)
        finished: list[Trajectory] = []
        pending: dict[ray.ObjectRef, int] = {}  # call -> trajectories in it

        def submit(chunk: list[tuple[Task, int]], worker: int) -> None:
            ref = self.workers[worker].rollout.remote([t for t, _ in chunk], [g for _, g in chunk], lockstep)
            pending[ref] = len(chunk)

        def collect_one() -> None:
            done, _ = ray.wait(list(pending), num_returns=1)
            del pending[done[0]]
            trajectories = ray.get(done[0])
            finished.extend(trajectories)
            if on_done:
                on_done(trajectories)

        n = len(self.workers)
        if lockstep:
            for start in range(0, len(items), cap):
                wave = items[start:start + cap]
                for w in range(n):
                    if wave[w::n]:
                        submit(wave[w::n], w)
                while pending:
                    collect_one()
        else:
            groups = [items[i:i + group_size] for i in range(0, len(items), group_size)]
            for i, group in enumerate(groups):
                while pending and sum(pending.values()) + len(group) > cap:
                    collect_one()
                submit(group, i % n)
            while pending:
                collect_one()
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
