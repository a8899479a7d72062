"""Benchmarks (`orchestra-rl bench ...`): each prints a table and keeps a JSON report in bench.output_dir."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console


def save_report(output_dir: str, name: str, report: dict[str, Any], console: Console) -> Path:
    """Write `report` as output_dir/<name>-<timestamp>.json and say where."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    console.print(f"report: {path}")
    return path
