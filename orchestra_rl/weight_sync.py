"""Weight sync, learner → rollout engines, in one module. Both roles import it; it imports neither role.

A transport has a send half (learner rank 0, after the FSDP2 shards are gathered) and a receive half (inside each
vLLM worker process, through `WeightReceiver`, vLLM's `worker_extension_cls`). `learner.weight_sync` picks one:

- `FileTransport` ("file", default): rank 0 writes safetensors to /dev/shm (RAM; a temporary folder where there is
  none), every engine reloads from there, then the file is deleted. Rank 0 and the engines share one node (or the
  folder is on a shared file system). A path, not tensors: tensors nested in collective_rpc arguments do not
  survive the trip into vLLM's worker process.
- `CollectiveTransport` ("collective"): learner rank 0 and one worker process per engine form a process group of
  their own (a TCPStore and a ProcessGroupGloo/NCCL built directly, beside the default groups FSDP and vLLM already
  use); rank 0 broadcasts tensor by tensor into buffers the engines then load. No file, any node. Backend:
  learner.backend (gloo on CPU, tested here; NCCL with GPU-resident buffers on GPUs).

`WeightReceiver.receive_checkpoint` loads a saved HF checkpoint instead (System.load_policy: an evaluation of
several checkpoints on one set of engines), once `interchangeable` says it has the engine's shape and tokenizer.

`WeightSync` drives one sync from the driver: it starts the receive half on every rollout worker and the send half
on the learner group, and reports bytes and seconds.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

Metadata = list[tuple[str, list[int], str]]  # what a broadcast carries, in order: (name, shape, dtype)
SYNC_GROUP_TIMEOUT_S = 600


def engine_tensors(state_dict: dict, dtype: str | None = None) -> dict:
    """The policy weights as an engine loads them: on CPU, floating tensors cast to `dtype` (the engine's, e.g.
    "bfloat16": fp32 master weights would double the bytes moved). A tied lm_head stays its own entry: vLLM's CPU
    runner keeps a separate lm_head tensor, which a reload of embed_tokens alone would leave stale."""
    import torch

    cast = getattr(torch, dtype) if dtype else None
    return {k: v.detach().to("cpu", dtype=cast if v.is_floating_point() else None).contiguous().clone()
            for k, v in state_dict.items()}


def with_tied_lm_head(tensors: dict, tied: bool) -> dict:
    """`tensors` with lm_head.weight added as the embeddings when the model ties them and a file left it out
    (safetensors refuses shared tensors, so HF checkpoints drop it)."""
    if tied and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        return {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
    return tensors


# config.json keys that say where a model came from or how it was stored, not what the engine computes.
PROVENANCE_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype")


def _config(folder: str) -> dict:
    config = json.loads((Path(folder) / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in PROVENANCE_KEYS}


def _tokenization(folder: str) -> tuple[bytes | None, str | None]:
    """What turns text into the engine's tokens: tokenizer.json, and the chat template (its own file, or the
    tokenizer config's entry)."""
    path = Path(folder)
    tokenizer = (path / "tokenizer.json").read_bytes() if (path / "tokenizer.json").exists() else None
    if (path / "chat_template.jinja").exists():
        return tokenizer, (path / "chat_template.jinja").read_text()
    config = path / "tokenizer_config.json"
    return tokenizer, json.loads(config.read_text()).get("chat_template") if config.exists() else None


def interchangeable(engine_model: str, checkpoint: str) -> str | None:
    """None when an engine started from `engine_model` can take `checkpoint`'s weights as they are (same
    architecture and sizes, same tokenizer and chat template); else why not (a hub name, not a folder: not here)."""
    if not (Path(checkpoint) / "config.json").exists():
        return f"no config.json in {checkpoint}"
    ours, theirs = _config(engine_model), _config(checkpoint)
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        return f"its config.json differs from the running model's in {differ}"
    tokenizer, template = _tokenization(checkpoint)
    if tokenizer is None or (tokenizer, template) != _tokenization(engine_model):
        return "its tokenizer.json or chat template differs from the running model's"
    return None


def checkpoint_tensors(folder: str) -> list:
    """Every tensor of an HF checkpoint folder's safetensors shards, the tied lm_head as its own entry."""
    from safetensors.torch import load_file

    shards = sorted(Path(folder).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    tensors: dict = {}
    for shard in shards:
        tensors.update(load_file(str(shard)))
    tied = json.loads((Path(folder) / "config.json").read_text()).get("tie_word_embeddings", False)
    return list(with_tied_lm_head(tensors, tied).items())


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _load_into_engine(model_runner, tensors: list) -> int:
    # model_runner.reload_weights handles vLLM's repacked CPU linear layers; model.load_weights does not.
    model_runner.reload_weights(weights_iterator=tensors)
    return len(tensors)


class FileTransport:
    """Send: write the weights to a file. Receive: read them back."""

    @staticmethod
    def new_path() -> str:
        """A fresh path for one sync's weights: in /dev/shm (RAM) where it exists, else the temporary folder."""
        shm = "/dev/shm"
        folder = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
        return os.path.join(folder, f"orchestra_rl-{uuid.uuid4().hex}.safetensors")

    @staticmethod
    def send(tensors: dict, path: str) -> int:
        """Write `tensors` (engine_tensors) as safetensors; returns the bytes written."""
        from safetensors.torch import save_file

        save_file(tensors, path)
        return nbytes(tensors.values())

    @staticmethod
    def receive(path: str) -> list:
        from safetensors.torch import load_file

        return list(load_file(path).items())


class CollectiveTransport:
    """A process group of learner rank 0 (its rank 0, hosting the store) and one process per engine."""

    def __init__(self, store, rank: int, world_size: int, backend: str):
        import torch.distributed as dist

        self.store = store  # kept alive as long as the group: rank 0's hosts the rendezvous
        prefixed = dist.PrefixStore("orchestra_rl/weight_sync", store)
        if backend == "nccl":
            self.group, self.device = dist.ProcessGroupNCCL(prefixed, rank, world_size), "cuda"
        else:  # config validation admits gloo | nccl
            timeout = timedelta(seconds=SYNC_GROUP_TIMEOUT_S)
            self.group, self.device = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout), "cpu"

    @staticmethod
    def host_store(host: str, world_size: int):
        """Rank 0's store on a port the OS picks (`.port`): bound before any member learns it, so no other process
        can take it in between."""
        import torch.distributed as dist

        return dist.TCPStore(host, 0, world_size, is_master=True, timeout=timedelta(seconds=SYNC_GROUP_TIMEOUT_S),
                             wait_for_workers=False)

    @classmethod
    def join(cls, host: str, port: int, rank: int, world_size: int, backend: str) -> "CollectiveTransport":
        """A member's side (rank >= 1): connect to rank 0's store at host:port, then form the group."""
        import torch.distributed as dist

        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=timedelta(seconds=SYNC_GROUP_TIMEOUT_S))
        return cls(store, rank, world_size, backend)

    def _broadcast(self, tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([tensor], opts).wait()

    @staticmethod
    def metadata(tensors: dict) -> Metadata:
        return [(name, list(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in tensors.items()]

    def send(self, tensors: dict, metadata: Metadata) -> int:
        """Rank 0: broadcast `tensors` in `metadata` order; returns the bytes sent."""
        sent = [tensors[name].to(self.device) for name, _, _ in metadata]
        for tensor in sent:
            self._broadcast(tensor)
        return nbytes(sent)

    def receive(self, metadata: Metadata) -> list:
        import torch

        received = []
        for name, shape, dtype in metadata:
            buffer = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._broadcast(buffer)
            received.append((name, buffer))
        return received


class WeightReceiver:
    """The receive half, mixed into vLLM's worker (`worker_extension_cls`): runs inside the worker process, where
    `self.model_runner` is vLLM's. Reached through `collective_rpc(<method name>, args)`."""

    def receive_file(self, path: str) -> int:
        return _load_into_engine(self.model_runner, FileTransport.receive(path))  # type: ignore[attr-defined]

    def receive_checkpoint(self, folder: str) -> int:
        """A saved HF checkpoint (checked first with `interchangeable`), read from its folder."""
        return _load_into_engine(self.model_runner, checkpoint_tensors(folder))  # type: ignore[attr-defined]

    def join_sync_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> bool:
        self._sync_transport = CollectiveTransport.join(host, port, rank, world_size, backend)
        return True

    def receive_broadcast(self, metadata: Metadata) -> int:
        return _load_into_engine(self.model_runner, self._sync_transport.receive(metadata))  # type: ignore[attr-defined]


class WeightSync:
    """Driver side: push the learner group's current policy into every rollout worker's engine.

    `learners` is a LearnerGroup (its ranks' `send_weights` / `join_weight_sync`); `rollout_workers` are
    RolloutWorker actors (their `receive_weights` / `join_weight_sync`). The collective group is formed on the
    first sync, and again when the live workers changed: all members must join at the same time."""

    def __init__(self, transport: str, learners: Any, rollout_workers: list):
        # The rollout manager's own list of live workers (not a copy): a worker it dropped gets no weights, and
        # the collective group is formed again without it.
        self.transport, self.learners, self.rollout_workers = transport, learners, rollout_workers
        self.metadata: Metadata | None = None
        self.members: list = []

    def __call__(self, version: int | None = None) -> dict[str, float]:
        """One sync; the engines label what they sample afterwards with `version` (default: their next)."""
        import ray

        start = time.perf_counter()
        if self.transport == "file":
            path = FileTransport.new_path()
            try:
                sent = self.learners.send_weights(path)
                ray.get([w.receive_weights.remote("receive_file", path, version=version) for w in self.rollout_workers])
            finally:
                if os.path.exists(path):
                    os.remove(path)
        else:
            if self.metadata is None or self.members != self.rollout_workers:
                self._form_group()
            # Both sides block in the same broadcasts: the receives must be in flight before the send.
            receives = [w.receive_weights.remote("receive_broadcast", self.metadata, version=version)
                        for w in self.rollout_workers]
            sent = self.learners.send_weights(None)
            ray.get(receives)
        return {"bytes": float(sent), "seconds": time.perf_counter() - start}

    def _form_group(self) -> None:
        """Learner rank 0 is rank 0 of the weight-sync group (its store already bound), rollout worker i its
        rank i + 1."""
        import ray

        world = 1 + len(self.rollout_workers)
        host, port = self.learners.open_weight_sync(world)
        joins = [w.join_weight_sync.remote(host, port, i + 1, world, self.learners.backend)
                 for i, w in enumerate(self.rollout_workers)]
        self.metadata = self.learners.join_weight_sync(world)
        ray.get(joins)
        self.members = list(self.rollout_workers)
