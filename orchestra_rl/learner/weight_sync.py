"""Weight sync, learner → rollout engines. Two ways, chosen by `learner.weight_sync`:

- "file" (default): the learners gather the policy (collective), rank 0 writes it to /dev/shm (RAM; a temporary
  folder where there is none), every rollout worker's vLLM reloads it from there (`WeightReloadExtension`), then
  the file is deleted. Needs rank 0 and the rollout workers on one node (or the folder on a shared file system).
- "collective": learner rank 0 and one worker process per engine form a process group of their own (a TCPStore
  and a ProcessGroupGloo/ProcessGroupNCCL built directly, beside the default groups FSDP and vLLM already use),
  and rank 0 broadcasts the tensors one by one into buffers the engines then load; no file, any node. The
  backend is learner.backend: gloo on CPU (tested here), NCCL on GPUs (GPU-resident buffers, untested: no GPU).
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


SYNC_GROUP_TIMEOUT_S = 600


def stateless_group(host: str, port: int, rank: int, world_size: int, backend: str):
    """A process group outside torch.distributed's default one; rank 0 hosts its store. Returns (group, store):
    keep the store alive as long as the group."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=SYNC_GROUP_TIMEOUT_S)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
    prefixed = dist.PrefixStore("orchestra_rl/weight_sync", store)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(prefixed, rank, world_size), store
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout), store
    raise ValueError(f"weight sync group: unknown backend {backend!r} (gloo | nccl)")


def broadcast_from_rank0(group, tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


def sync_through_group(broadcast: Callable[[], int], receive: Callable[[], list]) -> dict[str, float]:
    """`receive()` starts every engine's receive (returns Ray refs); `broadcast()` then sends from learner rank 0
    and returns the bytes sent. Both sides block in the same broadcasts, so the receives must be in flight first."""
    start = time.perf_counter()
    receives = receive()
    nbytes = broadcast()
    ray.get(receives)
    return {"bytes": float(nbytes), "seconds": time.perf_counter() - start}
