"""Where tasks come from and which environment runs them: the `env` config, by name (docs/environments.md).

    load_tasks(cfg, world_dir, split)     the tasks of every configured source, each tagged with its source
    environment_tool_names(cfg)           the tools the environments add (a τ²-Bench domain's, a domain folder's)
    check_sources(cfg)                    domain folders and benchmark files load (before any actor starts)
    make_environment(cfg, call_tool, …)   one Environment that runs each task in its source's environment

Several sources mix in one run (the QA world of `data` and τ²-Bench retail, say); with none configured, the QA
world alone, as before environments existed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from pathlib import Path

from orchestra_rl.config import Config, EnvSourceConfig, env_sources, final_tool_names
from orchestra_rl.data.benchmarks import load_benchmark_tasks
from orchestra_rl.data.world import load_tasks as load_world_tasks
from orchestra_rl.envs.base import Environment, Episode
from orchestra_rl.envs.benchmark import BenchmarkEnvironment
from orchestra_rl.envs.domain import DomainEnvironment, domain_folder, load_domain_tasks
from orchestra_rl.envs.domain import golden_turns as domain_golden_turns
from orchestra_rl.envs.domain_files import Domain
from orchestra_rl.envs.qa import CallTool, QAEnvironment
from orchestra_rl.envs.toolkit import toolkit_limits
from orchestra_rl.tools.sandbox import SandboxLimits
from orchestra_rl.types import Task


@functools.lru_cache(maxsize=16)
def _domain(folder: str) -> Domain:
    return Domain(folder)


def load_domain(cfg: Config, source: EnvSourceConfig) -> Domain:
    """A `domain` source's folder, loaded and checked (once per process)."""
    return _domain(str(domain_folder(source, cfg.data.cache_dir)))


def check_sources(cfg: Config) -> None:
    """What can be checked of the sources before any actor starts: every domain folder and benchmark file loads (a
    bad one is an error naming the file and the field)."""
    for name, source in env_sources(cfg).items():
        if source.kind == "domain":
            load_domain(cfg, source)
        elif source.kind == "benchmark":
            for split in source.data_files:
                load_benchmark_tasks(name, source, split)  # a split without a file: no tasks


def load_tasks(cfg: Config, world_dir: str | Path, split: str) -> list[Task]:
    tasks: list[Task] = []
    for name, source in env_sources(cfg).items():
        if source.kind == "qa":
            qa = load_world_tasks(world_dir, split)
            tasks += [dataclasses.replace(t, env=name) for t in qa[:source.max_tasks or None]]
        elif source.kind == "domain":
            tasks += load_domain_tasks(name, load_domain(cfg, source), split)[:source.max_tasks or None]
        elif source.kind == "benchmark":
            tasks += load_benchmark_tasks(name, source, split)[:source.max_tasks or None]
        else:
            from orchestra_rl.envs.tau2 import load_tau2_tasks

            tasks += load_tau2_tasks(name, source, split)
    return tasks


def environment_tool_names(cfg: Config) -> list[str]:
    """The tool names the configured environments add to the configured tools (a τ²-Bench domain's), so that
    summaries count their calls by name."""
    names: list[str] = []
    for source in env_sources(cfg).values():
        if source.kind == "tau2":
            from orchestra_rl.envs.tau2 import domain_spec

            names += [n for n in domain_spec(source).tool_names if n not in names]
        elif source.kind == "domain":
            names += [n for n in load_domain(cfg, source).tools if n not in names]
    return names


def golden_turns(cfg: Config, task: Task) -> list[str] | None:
    """The reference policy's turns for `task` where its environment has golden actions (a τ²-Bench domain, a
    domain folder); None for the QA world."""
    source = env_sources(cfg)[task.env]
    if source.kind == "tau2":
        from orchestra_rl.envs.tau2 import golden_turns as tau2_golden_turns

        return tau2_golden_turns(task)
    if source.kind == "domain":
        domain = load_domain(cfg, source)
        return domain_golden_turns(domain, next(t for t in domain.tasks if t.id == task.metadata["domain_task"]))
    return None


def domain_sandbox(cfg: Config, domain: Domain) -> SandboxLimits | None:
    """The sandbox limits a domain's code toolkit runs under: the python tool's (None: no code toolkit)."""
    if domain.toolkit is None:
        return None
    return toolkit_limits(cfg.tools)


class EnvironmentMix(Environment):
    """Each task goes to the environment of its source (Task.env)."""

    def __init__(self, environments: dict[str, Environment]):
        self.environments = environments

    async def reset(self, task: Task, group_index: int) -> Episode:
        env = self.environments.get(task.env)
        if env is None:
            raise ValueError(f"task {task.task_id}: no environment {task.env!r} is configured "
                             f"(env: {', '.join(self.environments)})")
        return await env.reset(task, group_index)

    async def close(self) -> None:
        await asyncio.gather(*(env.close() for env in self.environments.values()))


def make_environment(cfg: Config, call_tool: CallTool, tool_schemas: list[dict]) -> Environment:
    """The environments of every configured source; `call_tool` runs the configured tools (their schemas:
    `tool_schemas`)."""
    environments: dict[str, Environment] = {}
    for name, source in env_sources(cfg).items():
        if source.kind == "qa":
            environments[name] = QAEnvironment(call_tool, final_tool_names(cfg))
        elif source.kind == "benchmark":
            environments[name] = BenchmarkEnvironment(name, source, call_tool, final_tool_names(cfg))
        elif source.kind == "domain":
            domain = load_domain(cfg, source)
            environments[name] = DomainEnvironment(name, source, domain, call_tool, tool_schemas,
                                                   final_tool_names(cfg), domain_sandbox(cfg, domain))
        else:
            from orchestra_rl.envs.tau2 import Tau2Environment

            environments[name] = Tau2Environment(name, source, call_tool, tool_schemas, final_tool_names(cfg))
    return EnvironmentMix(environments)
