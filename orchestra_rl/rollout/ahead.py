"""The rollouts of later steps, in flight while the current step trains (train.mode=async).

Policy versions count training steps: the engines hold version v once the update of step v reached them (after
a step without an update, version v's weights are v - 1's; the engines are told the new number). The batch of step s
is submitted once the engines hold version s - max_staleness or newer; it trains at version s, so no token of it was
sampled by weights more than max_staleness versions old. max_staleness 0 is the synchronous loop: each batch is
submitted when its step begins, on the newest weights, and nothing runs ahead.

The tasks are drawn from the sampler in step order whatever the schedule, so step s trains on the same tasks in
both modes, and a resumed run continues the same stream (each batch remembers the position after its draw).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import ray

from orchestra_rl.data.sampler import TaskSampler
from orchestra_rl.rollout.manager import RolloutManager
from orchestra_rl.types import Task


class RolloutsAhead:
    """Steps `first`..`steps - 1`, each `take`n in order."""

    def __init__(self, manager: RolloutManager, sampler: TaskSampler, tasks_per_step: int, group_size: int,
                 max_staleness: int, first: int, steps: int):
        self.manager, self.sampler, self.steps = manager, sampler, steps
        self.tasks_per_step, self.group_size, self.max_staleness = tasks_per_step, group_size, max_staleness
        # A batch's submission blocks until its trajectories are done (the manager re-runs a dead worker's share):
        # one thread per batch in flight.
        self._pool = ThreadPoolExecutor(max_workers=max_staleness + 1, thread_name_prefix="rollouts-ahead")
        self._batches: dict[int, tuple[list[Task], int, Future]] = {}
        self._next = first  # the next step whose batch is not in flight yet

    def take(self, step: int, version: int) -> tuple[list[Task], list[ray.ObjectRef], int]:
        """Step `step`'s tasks, its rollouts (object references, once all have finished) and the sampler position
        after its tasks; first every later batch that the bound admits at `version` is put in flight."""
        while self._next < self.steps and self._next <= version + self.max_staleness:
            tasks = self.sampler.next(self.tasks_per_step)
            future = self._pool.submit(self.manager.submit, tasks, self.group_size)
            self._batches[self._next] = (tasks, self.sampler.position, future)
            self._next += 1
        tasks, position, future = self._batches.pop(step)
        return tasks, future.result(), position

    def __enter__(self) -> "RolloutsAhead":
        return self

    def __exit__(self, *_) -> None:
        # Batches still in flight (the run stopped early) finish on their own, or fail once the workers stop.
        self._pool.shutdown(wait=False, cancel_futures=True)
