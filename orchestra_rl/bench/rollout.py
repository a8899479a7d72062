"""`orchestra-rl bench rollout`: async vs lockstep agent loops on a tool-latency-heavy workload, side by side.

Workload: every trajectory makes `bench.turns` expert calls (the policy is constrained to well-formed calls of
the expert tools, so an untrained policy still exercises the loop), and the simulated experts answer after a
lognormal latency with a heavy tail (sigma `bench.latency_sigma`). Three runs on one running system:
  async     every trajectory its own asyncio task (the default)
  lockstep  each turn the batch waits for its slowest tool call (the reference implementation's schedule)
  no-latency bound  async with the experts' latency set to zero: what the engine alone allows
"""

from __future__ import annotations

import copy
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestra_rl.bench import save_report
from orchestra_rl.config import Config, validate
from orchestra_rl.data.world import load_tasks
from orchestra_rl.serve.experts import start_experts, stop_experts
from orchestra_rl.system import System


def bench_config(cfg: Config) -> Config:
    b = copy.deepcopy(cfg)
    experts = [n for n, t in b.tools.tools.items() if t.enabled and t.kind == "llm" and t.base_url == "experts"]
    if not experts:
        raise ValueError("bench rollout needs at least one enabled expert tool (kind llm, base_url experts)")
    b.rollout.constrained_tools = experts
    b.rollout.max_turns = cfg.bench.turns
    b.rollout.max_tokens_per_turn = cfg.bench.tokens_per_turn
    for name in experts:  # neither the per-tool bound nor a timeout may shape the latency distribution
        b.tools.tools[name].final_answer = False  # every trajectory makes all `turns` calls
        b.tools.tools[name].max_concurrency = max(b.tools.tools[name].max_concurrency, cfg.bench.concurrency)
        b.tools.tools[name].timeout_s = max(b.tools.tools[name].timeout_s, 300.0)
    for e in b.data.experts.values():
        e.latency_mean_s, e.latency_sigma = cfg.bench.latency_mean_s, cfg.bench.latency_sigma
    b.serve.latency_scale = 1.0
    return validate(b)


def _measure(system: System, tasks, lockstep: bool, concurrency: int) -> dict[str, float]:
    start = time.perf_counter()
    trajectories = system.rollout.rollout(tasks, group_size=1, lockstep=lockstep, max_in_flight=concurrency)
    wall = time.perf_counter() - start
    tool_latency = [c.result.latency_s for t in trajectories for c in t.tool_calls]
    return {
        "wall_s": wall,
        "trajectories_per_s": len(trajectories) / wall,
        "policy_tokens_per_s": sum(t.num_policy_tokens for t in trajectories) / wall,
        "tool_calls": len(tool_latency),
        "tool_latency_mean_s": sum(tool_latency) / max(1, len(tool_latency)),
        "tool_latency_max_s": max(tool_latency, default=0.0),
    }


def run_rollout_bench(cfg: Config) -> dict[str, Any]:
    b = bench_config(cfg)
    with System(b) as system:
        tasks = load_tasks(system.world_dir, "train")[: b.bench.num_trajectories]
        c = b.bench.concurrency
        system.rollout.rollout(tasks[:4], group_size=1)  # warm-up: engine compile paths, connections
        results = {
            "async": _measure(system, tasks, lockstep=False, concurrency=c),
            "lockstep": _measure(system, tasks, lockstep=True, concurrency=c),
        }
        stop_experts()
        b0 = copy.deepcopy(b)
        b0.serve.latency_scale = 0.0
        start_experts(b0, system.world_dir)
        results["no_latency_bound"] = _measure(system, tasks, lockstep=False, concurrency=c)
    ratio = results["async"]["trajectories_per_s"] / results["lockstep"]["trajectories_per_s"]
    report = {"runs": results, "async_over_lockstep": ratio,
              "workload": {"trajectories": len(tasks), "concurrency": c, "turns": b.bench.turns,
                           "tokens_per_turn": b.bench.tokens_per_turn, "latency_mean_s": b.bench.latency_mean_s,
                           "latency_sigma": b.bench.latency_sigma, "engine_device": b.rollout.engine.device}}
    table = Table(title=f"rollout bench: {len(tasks)} trajectories ({c} in flight) x {b.bench.turns} expert calls, "
                        f"lognormal latency mean {b.bench.latency_mean_s}s sigma {b.bench.latency_sigma}")
    for col in ("mode", "wall s", "trajectories/s", "policy tokens/s", "tool calls", "mean tool s", "max tool s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in results.items():
        table.add_row(mode, f"{r['wall_s']:.1f}", f"{r['trajectories_per_s']:.2f}", f"{r['policy_tokens_per_s']:.0f}",
                      str(r["tool_calls"]), f"{r['tool_latency_mean_s']:.2f}", f"{r['tool_latency_max_s']:.2f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"async / lockstep throughput: {ratio:.2f}x")
    save_report(cfg.bench.output_dir, "rollout", report, console)
    return report
