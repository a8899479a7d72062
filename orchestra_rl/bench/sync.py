"""`orchestra-rl bench sync`: weight-sync time against parameter bytes, both transports, a few model sizes.

For each hidden size in `bench.sync_hidden_sizes` a policy of the tiny model's shape (Qwen3, the configured layers
and vocabulary; intermediate 3× hidden, heads of 32) is built locally and a system with its learners and one
rollout worker is started; each transport (file through /dev/shm, collective broadcast) then syncs it
`bench.sync_repeats` times after a warm-up, and the median is kept. A least-squares line through (bytes, seconds)
per transport says whether the time is linear in bytes; the default size's sync is put against the step time of
the last `orchestra-rl train` run in `train.output_dir` (its steps.jsonl), when there is one. Goals: linear in
bytes, and <= 5 % of the default run's step time.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from orchestra_rl.bench import save_report
from orchestra_rl.config import Config, validate
from orchestra_rl.system import System
from orchestra_rl.weight_sync import WeightSync

TRANSPORTS = ("file", "collective")
TARGET_STEP_SHARE = 0.05
STEP_PARTS = ("time/rollout_s", "time/reward_s", "time/update_s", "sync/seconds")


def sized_config(cfg: Config, hidden_size: int) -> Config:
    sized = copy.deepcopy(cfg)
    m = sized.model
    m.path, m.hidden_size, m.intermediate_size = "", hidden_size, 3 * hidden_size
    m.num_attention_heads = max(1, hidden_size // m.head_dim)
    m.num_key_value_heads = max(1, m.num_attention_heads // 2)
    sized.rollout.num_workers = 1
    return validate(sized)


def measure_sync(learners, rollout_workers: list, transport: str, repeats: int) -> dict[str, float]:
    """Median seconds of `repeats` syncs from `learners` (a LearnerGroup) into the workers' engines."""
    sync = WeightSync(transport, learners, rollout_workers)
    sync()  # warm-up: the collective group forms here, buffers and page cache settle
    runs = [sync() for _ in range(repeats)]
    return {"bytes": runs[0]["bytes"], "median_s": statistics.median(r["seconds"] for r in runs),
            "max_s": max(r["seconds"] for r in runs)}


def linear_fit(points: list[tuple[float, float]]) -> dict[str, float]:
    """seconds = intercept + bytes / throughput, with R² (1: the points lie on the line)."""
    x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (slope * x + intercept)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return {"intercept_s": float(intercept), "throughput_mb_per_s": float(1 / slope / 1e6) if slope > 0 else float("inf"),
            "r2": 1.0 - residual / total if total > 0 else 1.0}


def default_step_time_s(cfg: Config) -> float | None:
    """The median step time of the last train run in train.output_dir (rollout + reward + update + sync)."""
    log = Path(cfg.train.output_dir) / "steps.jsonl"
    if not log.exists():
        return None
    steps = [json.loads(line) for line in log.read_text().splitlines() if line]
    totals = [sum(s.get(k, 0.0) for k in STEP_PARTS) for s in steps if "time/update_s" in s]
    return statistics.median(totals) if totals else None


def run_sync_bench(cfg: Config) -> dict[str, Any]:
    b = cfg.bench
    rows: list[dict[str, Any]] = []
    for hidden in b.sync_hidden_sizes:
        with System(sized_config(cfg, hidden), learners=True) as system:
            for transport in TRANSPORTS:
                rows.append({"hidden_size": hidden, "transport": transport,
                             **measure_sync(system.learners, system.rollout.workers, transport, b.sync_repeats)})
    fits = {t: linear_fit([(r["bytes"], r["median_s"]) for r in rows if r["transport"] == t]) for t in TRANSPORTS}
    step_s = default_step_time_s(cfg)
    default = [r for r in rows if r["hidden_size"] == cfg.model.hidden_size]
    shares = {r["transport"]: r["median_s"] / step_s for r in default} if step_s else {}

    table = Table(title=f"sync bench: median of {b.sync_repeats} syncs into one vLLM engine")
    for col in ("hidden", "transport", "MB", "median s", "max s", "MB/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["hidden_size"]), r["transport"], f"{r['bytes'] / 1e6:.2f}", f"{r['median_s']:.3f}",
                      f"{r['max_s']:.3f}", f"{r['bytes'] / 1e6 / r['median_s']:.0f}")
    console = Console(width=160)
    console.print(table)
    for t, f in fits.items():
        console.print(f"{t}: seconds = {f['intercept_s']:.3f} + bytes / ({f['throughput_mb_per_s']:.0f} MB/s), "
                      f"R² {f['r2']:.3f}")
    if step_s:
        console.print(f"default size ({cfg.model.hidden_size}) against the last train run's median step of "
                      f"{step_s:.1f} s: " + ", ".join(f"{t} {s:.2%}" for t, s in shares.items())
                      + f" (goal <= {TARGET_STEP_SHARE:.0%})")
    else:
        console.print(f"no train run in {cfg.train.output_dir}: run `orchestra-rl train` to compare with its step time")
    report = {"rows": rows, "fits": fits, "default_step_s": step_s, "default_step_share": shares}
    save_report(b.output_dir, "sync", report, console)
    return report
