"""Weight sync, learner → rollout engines, through one shared safetensors file.

The learners gather the policy (collective), rank 0 writes it to /dev/shm (RAM; a temporary folder where there is
none), every rollout worker's vLLM reloads it from there (`WeightReloadExtension`), then the file is deleted. This
needs rank 0 and the rollout workers on one node (or the folder on a shared file system).

On GPU clusters the intended upgrade is an NCCL broadcast from learner rank 0 into each engine's worker process
(a process group spanning learner and vLLM workers, weights streamed tensor by tensor, no file). It is not
implemented: it cannot be built or tested on the CPU machines this project runs on, and gloo offers no
equivalent worth having — on one node the /dev/shm file already costs one memory copy each way.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Callable

import ray


def weights_file() -> str:
    """A fresh path for one sync's weights: in /dev/shm (RAM) where it exists, else the temporary folder."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return os.path.join(folder, f"orchestra_rl-{uuid.uuid4().hex}.safetensors")


def sync_through_file(export: Callable[[str], int], rollout_workers: list) -> dict[str, float]:
    """`export(path)` writes the weights and returns the bytes written; then every rollout worker loads them.
    The file is removed even when a load fails."""
    path = weights_file()
    start = time.perf_counter()
    try:
        nbytes = export(path)
        exported = time.perf_counter()
        ray.get([w.load_weights.remote(path) for w in rollout_workers])
    finally:
        if os.path.exists(path):
            os.remove(path)
    end = time.perf_counter()
    return {"bytes": float(nbytes), "seconds": end - start, "export_seconds": exported - start,
            "load_seconds": end - exported}
