"""LearnerGroup: cfg.learner.num_learners LearnerWorker actors forming one torch.distributed group (FSDP2), driven
as one learner: each call goes to every rank at once, the batch split between them by tokens."""

from __future__ import annotations

import logging

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestra_rl.config import Config
from orchestra_rl.learner.batching import split_across_ranks
from orchestra_rl.learner.worker import LearnerWorker
from orchestra_rl.types import TrainSample

PLACEMENT_TIMEOUT_S = 300
# The rendezvous port is picked free on rank 0's node, then bound by rank 0 when it starts: another process may take
# it in between (EADDRINUSE); the group then starts again on another port.
RENDEZVOUS_ATTEMPTS = 3
log = logging.getLogger(__name__)


def gather(refs: list) -> list:
    """ray.get over all ranks' calls that raises as soon as any one fails: the other ranks may be blocked in a
    collective waiting for it (the group is then unusable; shut it down)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done[0])
    return ray.get(refs)


@ray.remote(num_cpus=0)
def master_address(single_node: bool) -> tuple[str, int]:
    """Run inside rank 0's bundle: its node's address (loopback on a one-node cluster) and a free port there."""
    import socket

    host = "127.0.0.1" if single_node else ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((host, 0))
        return host, s.getsockname()[1]


class LearnerGroup:
    def __init__(self, cfg: Config, model_path: str):
        lc = cfg.learner
        self.cfg, self.num_learners = cfg, lc.num_learners
        # The resources a learner takes (config.validate ensures there is one): Ray cannot place an all-zero bundle.
        bundle = {k: v for k, v in {"CPU": lc.num_cpus_per_learner, "GPU": lc.num_gpus_per_learner}.items() if v > 0}
        self.placement = placement_group([bundle] * lc.num_learners, strategy="PACK")
        ready, _ = ray.wait([self.placement.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            self.shutdown()
            raise RuntimeError(f"could not place {lc.num_learners} learners of {bundle} each within "
                               f"{PLACEMENT_TIMEOUT_S} s; free resources: {ray.available_resources()}")
        self.single_node = len([n for n in ray.nodes() if n["Alive"]]) == 1
        for attempt in range(1, RENDEZVOUS_ATTEMPTS + 1):
            addr, port = self.rank0_address()
            self.workers = [
                ray.remote(LearnerWorker).options(
                    num_cpus=lc.num_cpus_per_learner, num_gpus=lc.num_gpus_per_learner,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement,
                                                                         placement_group_bundle_index=rank),
                ).remote(cfg, model_path, rank, lc.num_learners, addr, port)
                for rank in range(lc.num_learners)
            ]
            try:
                gather([w.ready.remote() for w in self.workers])
                return
            except Exception as e:  # the group is unusable either way: retried on another port, or shut down
                if "EADDRINUSE" in str(e) and attempt < RENDEZVOUS_ATTEMPTS:
                    log.warning("the learners' rendezvous port %d was taken before rank 0 bound it; starting the "
                                "group again on another", port)
                    for w in self.workers:  # rank 0 is gone; the others wait for it in the rendezvous
                        ray.kill(w)
                    continue
                self.shutdown()
                raise

    def rank0_address(self) -> tuple[str, int]:
        """An address and a free port on rank 0's node: the rendezvous of a process group led by rank 0."""
        return ray.get(master_address.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=0),
        ).remote(self.single_node))

    def _split(self, samples: list[TrainSample]) -> list[list[int]]:
        return split_across_ranks(samples, self.num_learners)

    def update(self, samples: list[TrainSample] | ray.ObjectRef) -> dict[str, float]:
        """One update on the batch (algo.epochs passes); metrics of the whole batch. Given an object reference,
        the ranks fetch the batch from the object store themselves (the driver never holds its tokens); each
        trains on its share."""
        batch = samples if isinstance(samples, ray.ObjectRef) else ray.put(samples)
        return gather([w.update.remote(batch) for w in self.workers])[0]

    def logprobs(self, samples: list[TrainSample]) -> list[list[float]]:
        """The current policy's log p(token_i | <i) for every token of every sample (position 0: 0.0)."""
        shares = self._split(samples)
        results = gather([w.logprobs.remote([samples[i] for i in idx]) for w, idx in zip(self.workers, shares)])
        out: list[list[float]] = [[] for _ in samples]
        for idx, rows in zip(shares, results):
            for i, row in zip(idx, rows):
                out[i] = row
        return out

    # ---- weight sync (orchestra_rl/weight_sync.py drives it) ----

    @property
    def backend(self) -> str:
        return self.cfg.learner.backend

    def send_weights(self, path: str | None) -> int:
        """Gather the policy; rank 0 writes it to `path`, or broadcasts it over the weight-sync group (None)."""
        return gather([w.send_weights.remote(path) for w in self.workers])[0]

    def open_weight_sync(self, world_size: int) -> tuple[str, int]:
        """Rank 0 hosts the weight-sync group's store; its address and port, for the other members."""
        host, _ = self.rank0_address()
        return host, ray.get(self.workers[0].open_weight_sync.remote(host, world_size))

    def join_weight_sync(self, world_size: int):
        """Rank 0 joins the weight-sync group as its rank 0; returns the broadcast's metadata."""
        return gather([w.join_weight_sync.remote(world_size) for w in self.workers])[0]

    def save_checkpoint(self, directory: str) -> None:
        gather([w.save_checkpoint.remote(directory) for w in self.workers])

    def load_checkpoint(self, directory: str) -> None:
        gather([w.load_checkpoint.remote(directory) for w in self.workers])

    def __enter__(self) -> "LearnerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Leave the process group, stop the actors, free their resources. Safe to call twice."""
        workers, self.workers = getattr(self, "workers", []), []
        if workers:
            try:
                ray.get([w.shutdown.remote() for w in workers], timeout=30)
            except (ray.exceptions.RayError, TimeoutError) as e:  # a dead rank, or one stuck in a collective with it
                log.warning("learner group did not shut down cleanly (%s: %s); killing its ranks", type(e).__name__, e)
            for w in workers:
                ray.kill(w)
        placement, self.placement = getattr(self, "placement", None), None
        if placement is not None:
            remove_placement_group(placement)
