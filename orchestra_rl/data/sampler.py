"""Deterministic task stream: epoch e is a permutation seeded by (seed, e). Its only state is the position, so a
resumed run continues with exactly the tasks the interrupted one would have seen."""

from __future__ import annotations

import random

from orchestra_rl.types import Task


class TaskSampler:
    def __init__(self, tasks: list[Task], seed: int, position: int = 0):
        if not tasks:
            raise ValueError("no tasks to sample from")
        self.tasks, self.seed, self.position = tasks, seed, position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[Task]:
        batch = []
        for i in range(self.position, self.position + n):
            epoch, index = divmod(i, len(self.tasks))
            batch.append(self.tasks[self._order(epoch)[index]])
        self.position += n
        return batch
