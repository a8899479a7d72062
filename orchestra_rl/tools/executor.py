"""The tool executor: one async Ray actor that serves every tool call of the rollout workers.

It builds the configured tools once and runs many calls concurrently (each tool bounded by its
`max_concurrency`), so one slow expert call never holds back the other trajectories. Whatever goes wrong in a
call — unknown tool, bad arguments, a timeout, an exception inside the tool — comes back as a ToolResult with
`error` set: the policy is shown the error and the trajectory goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import ray

from orchestra_rl.config import ToolsConfig
from orchestra_rl.tools.base import ToolContext
from orchestra_rl.tools.registry import build_tools, tool_schemas
from orchestra_rl.types import ToolResult

log = logging.getLogger(__name__)

# Added to a tool's own deadline: the tool's timeout should fire first and say more than ours would.
DEADLINE_MARGIN_S = 1.0
# Calls one executor actor accepts at once; the per-tool semaphores are the real bound.
ACTOR_MAX_CONCURRENCY = 1000
# Times Ray re-sends a call whose executor died while serving it (to the restarted executor).
EXECUTOR_CALL_RETRIES = 3


def error_result(error: str, latency_s: float = 0.0) -> ToolResult:
    return ToolResult(text=f"Error: {error}", latency_s=latency_s, error=error)


@dataclass
class ToolStats:
    calls: int = 0
    errors: int = 0
    latency_s: float = 0.0  # total wall time of the calls, not counting the wait for a concurrency slot


class ToolExecutor:
    """Serves `call(name, arguments)` for the configured tools. Use directly, or as a Ray actor via make_executor."""

    def __init__(self, tools_cfg: ToolsConfig, ctx: ToolContext):
        self.tools = build_tools(tools_cfg, ctx)
        # A tool's limits are its entry's: the tools of one MCP server entry share its max_concurrency slots.
        entry_slots = {tool.entry: asyncio.Semaphore(tools_cfg.tools[tool.entry].max_concurrency)
                       for tool in self.tools.values()}
        self.slots = {name: entry_slots[tool.entry] for name, tool in self.tools.items()}
        # Tools that retry (llm, tavily search, mcp) may take longer than one timeout; they declare their worst case.
        self.deadlines = {
            name: getattr(tool, "deadline_s", tools_cfg.tools[tool.entry].timeout_s) + DEADLINE_MARGIN_S
            for name, tool in self.tools.items()
        }
        self.tool_stats = {name: ToolStats() for name in self.tools}

    async def call(self, name: str, arguments: dict[str, Any], task: str = "") -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return error_result(f"unknown tool {name!r}; known tools: {', '.join(self.tools)}")
        async with self.slots[name]:
            start = time.perf_counter()
            try:
                result = await asyncio.wait_for(tool.call(arguments, task), self.deadlines[name])
            except TimeoutError:
                log.error("tool %s: no result after %.1f s", name, self.deadlines[name])
                result = error_result(f"tool {name!r} timed out after {self.deadlines[name]:.1f} s",
                                      time.perf_counter() - start)
            except Exception as exc:  # a bug or an unexpected failure in a tool must not end the rollout
                log.exception("tool %s raised on arguments %r", name, arguments)
                result = error_result(f"tool {name!r} raised {type(exc).__name__}: {exc}", time.perf_counter() - start)
            elapsed = time.perf_counter() - start
        stats = self.tool_stats[name]
        stats.calls += 1
        stats.errors += result.error is not None
        stats.latency_s += elapsed
        return result

    def schemas(self) -> list[dict[str, Any]]:
        return tool_schemas(self.tools)

    def names(self) -> list[str]:
        return list(self.tools)

    def pid(self) -> int:
        """This executor's process (a fault test kills it)."""
        return os.getpid()

    def stats(self) -> dict[str, dict[str, float]]:
        return {name: asdict(s) for name, s in self.tool_stats.items()}

    async def close(self) -> None:
        """Release every tool's clients and processes (MCP sessions: a stdio server exits)."""
        for tool in self.tools.values():
            await tool.close()


def make_executor(tools_cfg: ToolsConfig, ctx: ToolContext, num_cpus: float | None = None) -> ray.actor.ActorHandle:
    """Start a ToolExecutor actor (num_cpus defaults to tools_cfg.num_cpus_per_executor). It holds no state a
    call depends on, so Ray restarts it whenever its process dies, and re-sends the calls that were in flight
    (EXECUTOR_CALL_RETRIES times each; the tools' calls may then run twice, which none of them minds)."""
    actor = ray.remote(ToolExecutor).options(
        num_cpus=tools_cfg.num_cpus_per_executor if num_cpus is None else num_cpus,
        max_concurrency=ACTOR_MAX_CONCURRENCY,
        max_restarts=-1,
        max_task_retries=EXECUTOR_CALL_RETRIES,
    )
    return actor.remote(tools_cfg, ctx)


def close_executor(executor: ray.actor.ActorHandle, timeout_s: float = 30.0) -> None:
    """Close an executor actor's tools (MCP servers stop), then kill it; a close that fails or hangs is logged."""
    try:
        ray.get(executor.close.remote(), timeout=timeout_s)
    except Exception as exc:
        log.warning("tool executor: closing its tools failed (%s); killing it", type(exc).__name__)
    ray.kill(executor)


class ToolPool:
    """Client side, in a rollout worker: spreads calls over several executor actors, round-robin. A call whose
    executor died beyond Ray's own restart and retries goes to the next one; only when every executor failed it
    is an error result, and the trajectory goes on."""

    def __init__(self, executors: list[ray.actor.ActorHandle]):
        if not executors:
            raise ValueError("ToolPool needs at least one ToolExecutor actor")
        self.executors = executors
        self._next = itertools.cycle(range(len(executors)))

    async def call(self, name: str, arguments: dict[str, Any], task: str = "") -> ToolResult:
        first = next(self._next)
        causes = []
        for i in range(len(self.executors)):
            executor = self.executors[(first + i) % len(self.executors)]
            try:
                return await executor.call.remote(name, arguments, task)
            except ray.exceptions.RayActorError as e:
                log.warning("tool executor %d failed on a %s call (%s); trying the next one",
                            (first + i) % len(self.executors), name, type(e).__name__)
                causes.append(type(e).__name__)
        return error_result(f"every tool executor failed on this {name!r} call ({', '.join(causes)})")
