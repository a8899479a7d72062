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
from typing import Callable

import ray

from orchestra_rl.types import Task, Trajectory, in_task_order

log = logging.getLogger(__name__)

Item = tuple[Task, int]  # (task, group index)


class RolloutManager:
    def __init__(self, workers: list, mode: str = "async"):
        self.workers, self.mode = list(workers), mode

    def submit(self, tasks: list[Task], group_size: int, lockstep: bool | None = None, max_in_flight: int = 0,
               on_done: Callable[[ray.ObjectRef, int], None] | None = None) -> list[ray.ObjectRef]:
        """group_size trajectories per task; returns, once all have finished, one reference per worker call (each
        to a list of trajectories), in submission order. `on_done(ref, n)` sees each call as it finishes."""
        if lockstep is None:
            lockstep = self.mode == "lockstep"
        items = [(task, g) for task in tasks for g in range(group_size)]
        cap = max_in_flight or len(items)
        submitted: list[ray.ObjectRef] = []
        pending: dict[ray.ObjectRef, int] = {}  # call -> trajectories in it

        def submit(chunk: list[Item], worker: int) -> None:
            ref = self.workers[worker].rollout.remote([t for t, _ in chunk], [g for _, g in chunk], lockstep)
            pending[ref] = len(chunk)
            submitted.append(ref)

        def finish_one() -> None:
            (done,), _ = ray.wait(list(pending), num_returns=1, fetch_local=False)
            n = pending.pop(done)
            if on_done:
                on_done(done, n)

        n = len(self.workers)
        if lockstep:
            for start in range(0, len(items), cap):
                wave = items[start:start + cap]
                for w in range(n):
                    if wave[w::n]:
                        submit(wave[w::n], w)
                while pending:
                    finish_one()
        else:
            for i in range(0, len(items), group_size):
                group = items[i:i + group_size]
                while pending and sum(pending.values()) + len(group) > cap:
                    finish_one()
                submit(group, (i // group_size) % n)
        while pending:
            finish_one()
        return submitted

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

