"""Trainer checkpoints: `<run>/checkpoints/step_<k>/` holds the learners' files (the policy as an HF directory
that transformers and vLLM load, optimiser state) and trainer_state.json (step, data position, RNG, W&B id)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch


def checkpoint_dir(run_dir: str, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(run_dir: str) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last)."""
    done = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/trainer_state.json"))
    return done[-1] if done else None


def save_trainer_state(ckpt: Path, step: int, data_position: int, wandb_id: str) -> None:
    state = {"step": step, "data_position": data_position, "wandb_id": wandb_id,
             "python_rng": repr(random.getstate()), "torch_rng": torch.get_rng_state().tolist()}
    tmp = ckpt / "trainer_state.json.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(ckpt / "trainer_state.json")


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    import ast

    state = json.loads((ckpt / "trainer_state.json").read_text())
    random.setstate(ast.literal_eval(state["python_rng"]))
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state
