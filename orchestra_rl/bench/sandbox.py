"""`orchestra-rl bench sandbox`: throughput and latency of the python tool on trivial programs, per confinement.

Every mode this machine can run (tools/sandbox.py: cgroup1, userns) executes `bench.sandbox_runs` trivial
programs through the python tool itself (sandbox start, program, teardown, result), `bench.sandbox_concurrency`
at once, side by side in one run. Targets: >= 30 executions/s on 2 cores, p99 latency < 300 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestra_rl.bench import save_report
from orchestra_rl.config import Config
from orchestra_rl.tools.python import PythonTool
from orchestra_rl.tools.sandbox import SandboxLimits, SandboxUnavailable, check_sandbox

PROGRAM = "print(6 * 7)"
TARGET_RATE, TARGET_P99_S = 30.0, 0.300


async def _measure(tool: PythonTool, runs: int, concurrency: int) -> dict[str, float]:
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            start = time.perf_counter()
            result = await tool.run({"code": PROGRAM})
            latencies.append(time.perf_counter() - start)
            if result.error or result.text != "42":
                raise RuntimeError(f"a trivial program failed in the sandbox: {result.text!r} ({result.error})")

    await asyncio.gather(*(one() for _ in range(min(concurrency, runs))))  # warm-up: page cache, first cgroups
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(runs)))
    wall = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")  # within the data
    return {"runs": runs, "wall_s": wall, "executions_per_s": runs / wall, "p50_s": statistics.median(latencies),
            "p99_s": cuts[98], "max_s": max(latencies)}


def run_sandbox_bench(cfg: Config) -> dict[str, Any]:
    python = cfg.tools.settings_of_kind("python")
    if python is None:
        raise ValueError("bench sandbox needs a tool of kind python in tools.tools (its limits are benchmarked)")
    b = cfg.bench
    results: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for mode in ("cgroup1", "userns"):
        try:
            check_sandbox(mode)
        except SandboxUnavailable as e:
            unavailable[mode] = str(e)
            continue
        limits = replace(SandboxLimits.from_tool_config(python), mode=mode)
        tool = PythonTool("python", python.description, limits)
        results[mode] = asyncio.run(_measure(tool, b.sandbox_runs, b.sandbox_concurrency))
    if not results:
        raise SandboxUnavailable("; ".join(unavailable.values()))
    table = Table(title=f"sandbox bench: {b.sandbox_runs} trivial programs, {b.sandbox_concurrency} at once "
                        f"(targets: >= {TARGET_RATE:g}/s, p99 < {TARGET_P99_S * 1000:g} ms)")
    for col in ("mode", "wall s", "executions/s", "p50 ms", "p99 ms", "max ms", "targets met"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in results.items():
        r["targets_met"] = r["executions_per_s"] >= TARGET_RATE and r["p99_s"] < TARGET_P99_S
        table.add_row(mode, f"{r['wall_s']:.2f}", f"{r['executions_per_s']:.1f}", f"{r['p50_s'] * 1000:.0f}",
                      f"{r['p99_s'] * 1000:.0f}", f"{r['max_s'] * 1000:.0f}", "yes" if r["targets_met"] else "no")
    console = Console(width=160)
    console.print(table)
    for mode, why in unavailable.items():
        console.print(f"{mode}: not measured here: {why}")
    report = {"runs": results, "unavailable": unavailable,
              "workload": {"program": PROGRAM, "runs": b.sandbox_runs, "concurrency": b.sandbox_concurrency}}
    save_report(b.output_dir, "sandbox", report, console)
    return report
