"""Deterministic task stream: epoch e is a permutation seeded by (seed, e). Its only state is the position, so a
resumed run continues with exactly the tasks the interrupted one would have seen."""

from __future__ import annotations

import random
from itertools import zip_longest

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


def interleave_families(tasks: list[Task]) -> list[Task]:
    """Tasks round-robin over their families, so any prefix (a demonstration quota, an evaluation subset) covers
    the families evenly."""
    by_family: dict[str, list[Task]] = {}
    for t in tasks:
        by_family.setdefault(t.family, []).append(t)
    return [t for group in zip_longest(*by_family.values()) for t in group if t is not None]
