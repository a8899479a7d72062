"""Weights & Biases tracking: online with an API key, offline otherwise (the run folder's path is printed)."""

from __future__ import annotations

import os
from typing import Any

from orchestra_rl.config import Config, as_plain
from orchestra_rl.types import Trajectory


class Tracker:
    def __init__(self, cfg: Config, run_dir: str, resume_id: str | None = None, resume_step: int | None = None):
        """resume_id/resume_step: continue that run after its checkpoint at resume_step. Online, W&B rewinds the
        run's history to that step (`resume_from`), so steps logged after it by the interrupted driver are
        replaced; offline W&B cannot rewind, and keeps the first value of such a step (it drops a step logged
        twice). The run folder's steps.jsonl is rewound in both cases (trainer.rewind_step_log)."""
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")  # our own line below says where the run is
        mode = cfg.train.wandb_mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        if resume_id and mode == "online" and resume_step is not None:
            resume = {"resume_from": f"{resume_id}?_step={resume_step}"}
        else:
            resume = {"id": resume_id, "resume": "allow" if resume_id else None}
        self.run = wandb.init(project=cfg.train.wandb_project, mode=mode, dir=run_dir, config=as_plain(cfg),
                              reinit="finish_previous", **resume)
        self.wandb = wandb
        print(f"W&B run ({mode}): {self.run.dir if mode != 'disabled' else 'disabled'}")

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_eval(self, summary: dict[str, Any], step: int) -> None:
        """An evaluation's overall numbers (accuracy, reward, $ cost, ...) as eval/<name>."""
        self.log({f"eval/{k}": v for k, v in summary["overall"].items() if isinstance(v, float)}, step=step)

    def log_trajectories(self, trajectories: list[Trajectory], step: int, tokenizer: Any, limit: int = 4) -> None:
        """A table of sample trajectories: what the orchestrator said, the calls it made, and its reward."""
        table = self.wandb.Table(columns=["task_id", "family", "reward", "answer", "tool_calls", "text"])
        for t in trajectories[:limit]:
            table.add_data(t.task_id, t.family, t.reward, t.final_answer, ", ".join(c.name for c in t.tool_calls),
                           tokenizer.decode(t.token_ids[t.prompt_length:]))
        self.run.log({"samples": table}, step=step)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.run.finish()
