"""RolloutManager: schedules trajectories over the rollout workers and owns their lifetime.

Two schedules (rollout.mode):
- async: task groups stream through the workers, at most `max_in_flight` trajectories at once (0: all); a new
  group starts as soon as a call finishes. Inside a worker each trajectory is its own asyncio task.
- lockstep (the reference implementation's schedule, for comparison): waves of `max_in_flight` trajectories, each
  wave one call per worker whose agent loops share a turn barrier: every turn waits for the slowest tool call.

`submit` returns object references: the trajectories stay in Ray's object store, and the next stage (the reward
actor) fetches them itself, so the driver never holds their tokens.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import ray

from orchestra_rl.types import Task, Trajectory, in_task_order

log = logging.getLogger(__name__)

Item = tuple[Task, int]  # (task, group index)


class RolloutManager:
    """`workers` are the live rollout workers: one that dies is dropped from it (the failure logged with its
    cause), and the trajectories of its unfinished calls are re-run on the others, so a batch loses none. The
    weight sync reads the same list, so it only ever pushes to live engines."""

    def __init__(self, workers: list, mode: str = "async"):
        self.workers, self.mode = list(workers), mode
        self.lost_workers = 0  # rollout workers that died so far (a metric)
        self._lock = threading.Lock()

    def submit(self, tasks: list[Task], group_size: int, lockstep: bool | None = None, max_in_flight: int = 0,
               on_done: Callable[[ray.ObjectRef, int], None] | None = None) -> list[ray.ObjectRef]:
        """group_size trajectories per task; returns, once all have finished, one reference per worker call (each
        to a list of trajectories), in submission order. `on_done(ref, n)` sees each call as it finishes."""
        if lockstep is None:
            lockstep = self.mode == "lockstep"
        items = [(task, g) for task in tasks for g in range(group_size)]
        cap = max_in_flight or len(items)
        submitted: list[ray.ObjectRef] = []
        # A call's small first return (its trajectory count) -> (its slot in `submitted`, its items, its worker).
        pending: dict[ray.ObjectRef, tuple[int, list[Item], object]] = {}

        def submit(chunk: list[Item], worker, slot: int | None = None) -> None:
            count, ref = worker.rollout.options(num_returns=2).remote(
                [t for t, _ in chunk], [g for _, g in chunk], lockstep)
            if slot is None:
                slot = len(submitted)
                submitted.append(ref)
            else:
                submitted[slot] = ref
            pending[count] = (slot, chunk, worker)

        def finish_one() -> None:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            slot, chunk, worker = pending.pop(done)
            try:
                ray.get(done)  # a count: fetching it says whether the call succeeded, without its tokens
            except ray.exceptions.RayActorError as e:
                self._lose(worker, e)
                submit(chunk, self._live_worker(slot), slot)  # the same trajectories, elsewhere
                return
            if on_done:
                on_done(submitted[slot], len(chunk))

        if lockstep:
            for start in range(0, len(items), cap):
                wave = items[start:start + cap]
                workers = list(self.workers)
                for w, worker in enumerate(workers):
                    if wave[w::len(workers)]:
                        submit(wave[w::len(workers)], worker)
                while pending:
                    finish_one()
        else:
            for i in range(0, len(items), group_size):
                group = items[i:i + group_size]
                while pending and sum(len(c) for _, c, _ in pending.values()) + len(group) > cap:
                    finish_one()
                submit(group, self._live_worker(i // group_size))
        while pending:
            finish_one()
        return submitted

    def _live_worker(self, index: int):
        if not self.workers:
            raise RuntimeError(f"every rollout worker died ({self.lost_workers}); see the warnings above")
        return self.workers[index % len(self.workers)]

    def set_policy_version(self, version: int) -> None:
        """Label the engines' current weights `version` without loading any: a resumed run's first step, or the
        step after one that updated nothing (rollout/ahead.py)."""
        ray.get([w.set_policy_version.remote(version) for w in self.workers])

    def _lose(self, worker, error: Exception) -> None:
        with self._lock:  # batches of several steps may be in flight (rollout/ahead.py), each in its own thread
            if worker not in self.workers:
                return
            self.workers.remove(worker)
            self.lost_workers += 1
            log.warning("a rollout worker died (%s: %s); its unfinished trajectories run again on the %d left",
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "", len(self.workers))

    def rollout(self, tasks: list[Task], group_size: int, lockstep: bool | None = None, max_in_flight: int = 0,
                on_done: Callable[[list[Trajectory]], None] | None = None) -> list[Trajectory]:
        """`submit`, fetched here: the trajectories grouped in task order (evaluation and benchmarks). Each call's
        result is fetched once, as it finishes; `on_done` sees it then."""
        fetched: dict[ray.ObjectRef, list[Trajectory]] = {}

        def fetch(ref: ray.ObjectRef, _: int) -> None:
            fetched[ref] = ray.get(ref)
            if on_done:
                on_done(fetched[ref])

        refs = self.submit(tasks, group_size, lockstep, max_in_flight, fetch)
        return in_task_order([t for ref in refs for t in fetched[ref]], tasks)

    def close(self) -> None:
        workers, self.workers = self.workers, []
        for w in workers:
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except (ray.exceptions.RayError, TimeoutError) as e:
                log.warning("rollout worker did not shut down cleanly: %s", e)
            ray.kill(w)

