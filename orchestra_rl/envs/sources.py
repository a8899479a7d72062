"""Where tasks come from and which environment runs them: the `env` config, by name (docs/environments.md).

    load_tasks(cfg, world_dir, split)     the tasks of every configured source, each tagged with its source
    environment_tool_names(cfg)           the tools the environments add (a τ²-Bench domain's)
    make_environment(cfg, call_tool, …)   one Environment that runs each task in its source's environment

Several sources mix in one run (the QA world of `data` and τ²-Bench retail, say); with none configured, the QA
world alone, as before environments existed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestra_rl.config import Config, env_sources, final_tool_names
from orchestra_rl.data.world import load_tasks as load_world_tasks
from orchestra_rl.envs.base import Environment, Episode
from orchestra_rl.envs.qa import CallTool, QAEnvironment
from orchestra_rl.types import Task


def load_tasks(cfg: Config, world_dir: str | Path, split: str) -> list[Task]:
    tasks: list[Task] = []
    for name, source in env_sources(cfg).items():
        if source.kind == "qa":
            qa = load_world_tasks(world_dir, split)
            tasks += [dataclasses.replace(t, env=name) for t in qa[:source.max_tasks or None]]
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
    return names


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


def make_environment(cfg: Config, call_tool: CallTool, tool_schemas: list[dict]) -> Environment:
    """The environments of every configured source; `call_tool` runs the configured tools (their schemas:
    `tool_schemas`)."""
    environments: dict[str, Environment] = {}
    for name, source in env_sources(cfg).items():
        if source.kind == "qa":
            environments[name] = QAEnvironment(call_tool, final_tool_names(cfg))
        else:
            from orchestra_rl.envs.tau2 import Tau2Environment

            environments[name] = Tau2Environment(name, source, call_tool, tool_schemas, final_tool_names(cfg))
    return EnvironmentMix(environments)
