"""The task stream (resume = same order) and the family round-robin of evaluation subsets and demonstrations."""

from orchestra_rl.data.sampler import TaskSampler, interleave_families
from tests.helpers import make_task


def tasks_of(families: str) -> list:
    return [make_task(f"{f}{i}", family=f) for i, f in enumerate(families)]


def test_interleave_takes_the_families_in_turn_and_keeps_their_order():
    tasks = tasks_of("aaabbc")
    assert [t.task_id for t in interleave_families(tasks)] == ["a0", "b3", "c5", "a1", "b4", "a2"]
    # Any prefix covers the families as evenly as it can.
    assert {t.family for t in interleave_families(tasks)[:3]} == {"a", "b", "c"}


def test_a_resumed_stream_continues_where_the_first_stopped():
    tasks = tasks_of("abcdefg")
    whole = TaskSampler(tasks, seed=3)
    first = [whole.next(3) for _ in range(5)]
    resumed = TaskSampler(tasks, seed=3, position=9)
    assert [resumed.next(3) for _ in range(2)] == first[3:]
    # Each epoch is a permutation: every task once per len(tasks) draws.
    assert sorted(t.task_id for t in TaskSampler(tasks, seed=3).next(7)) == sorted(t.task_id for t in tasks)
