"""Trainer checkpoints: `<run>/checkpoints/step_<k>/` holds the learners' files (POLICY_DIR: the policy as an HF
directory that transformers and vLLM load; optimiser state) and trainer_state.json (step, data position, W&B id).

No RNG state is saved: the driver draws from no global generator (the task stream is seeded by position, see
data.sampler), so step and data position are all a resumed run needs to see the same tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

POLICY_DIR = "policy"  # <checkpoint>/policy: an HF model directory (transformers, vLLM, `model.path=`)


def checkpoint_dir(run_dir: str, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(run_dir: str) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last)."""
    done = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/trainer_state.json"))
    return done[-1] if done else None


def save_trainer_state(ckpt: Path, step: int, data_position: int, wandb_id: str) -> None:
    state = {"step": step, "data_position": data_position, "wandb_id": wandb_id}
    tmp = ckpt / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(ckpt / "trainer_state.json")


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer_state.json").read_text())
