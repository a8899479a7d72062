"""One place that brings every role of the actor system up from the config, and down again.

    with ray_session(cfg), System(cfg, model_path, learners=True) as system:
        system.world_dir       the task world (built once into the cache); system.tasks(split): every source's
        system.executors       tool executors (python sandbox, search, LLM callers); experts on Ray Serve
        system.rollout         RolloutManager over the rollout workers (vLLM engine + agent loops each)
        system.reward          the reward actor
        system.learners        the FSDP2 learner group (in its own placement group)
        system.sync_weights()  learner → every engine (orchestra_rl/weight_sync.py)
        system.load_policy(p)  a saved checkpoint → every engine, when it fits them (`can_load`)

`eval`, `bench`, `sft` and `train` all build through `System`, so the default embedded run and a GPU cluster
differ only by configuration (cluster address, resources, model, engine settings). `ray_session` is the one
owner of the Ray lifetime (the CLI holds it around every command); a System never starts or stops Ray, so a test
session's Ray or an attached cluster outlives it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Iterator

import ray

from orchestra_rl.config import Config
from orchestra_rl.data.world import build_world
from orchestra_rl.envs.sources import environment_tool_names, load_tasks
from orchestra_rl.learner.group import LearnerGroup
from orchestra_rl.models.tiny import resolve_model_path
from orchestra_rl.reward.actor import make_reward_actor
from orchestra_rl.rollout.manager import RolloutManager
from orchestra_rl.rollout.worker import make_rollout_worker
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.executor import close_executor, make_executor
from orchestra_rl.types import Task
from orchestra_rl.weight_sync import WeightSync, interchangeable

log = logging.getLogger(__name__)

# Actors inherit these: keep vLLM's per-request logging out of the driver's console.
ACTOR_ENV = {"VLLM_LOGGING_LEVEL": "ERROR", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


@contextlib.contextmanager
def ray_session(cfg: Config) -> Iterator[None]:
    """Start an embedded Ray (empty cluster.address) or attach to one, and shut it down on the way out. Inside an
    already running Ray (a test session's), it does neither."""
    if ray.is_initialized():
        yield
        return
    c = cfg.cluster
    if c.address:
        ray.init(address=c.address, namespace=c.namespace, runtime_env={"env_vars": ACTOR_ENV},
                 log_to_driver=c.log_to_driver)
    else:
        # Locally, actors are mostly waiting on I/O or each other: schedule by logical CPUs, at least 4.
        num_cpus = c.num_cpus if c.num_cpus is not None else max(4, os.cpu_count() or 1)
        # Actor output goes to Ray's session logs (/tmp/ray/session_latest/logs), not over the progress bar;
        # actor errors still reach the driver as exceptions. address="local": a new instance even when a cluster
        # from `ray start` runs on this machine (ray.init() with no address would attach to it).
        ray.init(address="local", num_cpus=num_cpus, num_gpus=c.num_gpus, namespace=c.namespace,
                 include_dashboard=False, runtime_env={"env_vars": ACTOR_ENV}, logging_level=logging.WARNING,
                 log_to_driver=c.log_to_driver)
    try:
        yield
    finally:
        ray.shutdown()


class System:
    """The running roles. Use as a context manager; `close()` stops every role it started, in reverse order.

    rollout=False: no inference engine (scripted demonstrations); learners=True: the learner group too, and the
    weight sync between it and the rollout workers."""

    def __init__(self, cfg: Config, model_path: str | None = None, rollout: bool = True, learners: bool = False):
        if not ray.is_initialized():
            raise RuntimeError("System needs a running Ray: build it inside `with ray_session(cfg):`")
        self.cfg = cfg
        self.model_path = model_path or resolve_model_path(cfg)
        self._engine_model = self.model_path  # what the engines were built from (load_policy swaps weights only)
        self._stop = contextlib.ExitStack()
        self.rollout: RolloutManager | None = None
        self.learners: LearnerGroup | None = None
        self._weight_sync: WeightSync | None = None
        try:
            self._start(rollout, learners)
        except BaseException:
            self.close()
            raise

    def _start(self, rollout: bool, learners: bool) -> None:
        cfg = self.cfg
        self.world_dir = build_world(cfg.data)
        experts_url = ""
        uses_experts = any(t.enabled and t.kind == "llm" and t.base_url == "experts" for t in cfg.tools.tools.values())
        if uses_experts:  # validated: an enabled experts tool implies serve.enabled
            from orchestra_rl.serve.experts import start_experts, stop_experts

            experts_url = start_experts(cfg, self.world_dir)
            self._stop.callback(stop_experts)
        self.tool_context = ToolContext(world_dir=str(self.world_dir), experts_base_url=experts_url)
        self.executors = [make_executor(cfg.tools, self.tool_context) for _ in range(cfg.tools.num_executors)]
        for executor in self.executors:
            self._stop.callback(close_executor, executor)  # closes its tools' sessions (MCP servers), then kills it
        self.tool_schemas: list[dict] = ray.get(self.executors[0].schemas.remote())
        configured = [s["function"]["name"] for s in self.tool_schemas]
        # Every name a policy may call here (the configured tools and the environments' own), for summaries.
        self.tool_names: list[str] = configured + [n for n in environment_tool_names(cfg) if n not in configured]
        self.reward = make_reward_actor(cfg, self.tool_context)
        self._stop.callback(ray.kill, self.reward)
        if rollout:
            workers = [make_rollout_worker(cfg, self.model_path, self.executors, self.tool_schemas)
                       for _ in range(cfg.rollout.num_workers)]
            self.rollout = RolloutManager(workers, cfg.rollout.mode)
            self._stop.callback(self.rollout.close)
        if learners:
            # Built while the workers' engines load (each actor starts its engine as it is created): one wait.
            self.learners = LearnerGroup(cfg, self.model_path)
            self._stop.callback(self.learners.shutdown)
        if self.rollout is not None:
            ray.get([w.ready.remote() for w in self.rollout.workers])
            if self.learners is not None:
                self._weight_sync = WeightSync(cfg.learner.weight_sync, self.learners, self.rollout.workers)

    def tasks(self, split: str) -> list[Task]:
        """The tasks of `split` from every configured environment source (envs/sources.py)."""
        return load_tasks(self.cfg, self.world_dir, split)

    def sync_weights(self, version: int | None = None) -> dict[str, float]:
        """Push the learners' current policy into every rollout worker's engine, as policy `version` (default:
        the engines' next); bytes and seconds."""
        assert self._weight_sync is not None, "sync_weights needs System(..., rollout=True, learners=True)"
        return self._weight_sync(version)

    def can_load(self, checkpoint: str) -> str | None:
        """None when `load_policy(checkpoint)` can swap it into the running engines; else why not."""
        if self.rollout is None:
            return "this System runs no rollout workers"
        return interchangeable(self._engine_model, checkpoint)

    def load_policy(self, checkpoint: str) -> None:
        """Load a saved HF checkpoint into every rollout worker's engine, in place of the policy they run: no new
        engines, so evaluating several checkpoints of one model costs one start."""
        why_not = self.can_load(checkpoint)
        if why_not:
            raise ValueError(f"cannot load {checkpoint} into the running engines: {why_not}")
        assert self.rollout is not None
        ray.get([w.receive_weights.remote("receive_checkpoint", checkpoint) for w in self.rollout.workers])
        self.model_path = checkpoint

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_path)

    def __enter__(self) -> "System":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.close()
