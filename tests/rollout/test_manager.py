"""The rollout manager's schedules through the real system (a vLLM rollout worker, a tool executor), observed
from a remote LLM tool: a stub of a paid OpenAI-compatible API on loopback that records when each call was in
flight. The policy is constrained to call that tool every turn, so every turn of every trajectory is one call."""

import copy
import signal
import threading
import time

import psutil
import pytest
import ray

from orchestra_rl.config import ToolConfig, validate
from orchestra_rl.data.world import load_tasks
from orchestra_rl.rollout.worker import make_rollout_worker
from orchestra_rl.system import System
from tests.conftest import serve_stub

pytestmark = pytest.mark.integration

TURNS = 3
TRAJECTORIES = 6
DELAY_S = 0.4  # long against a tiny-model turn, so the calls of one wave overlap


@pytest.fixture(scope="module")
def stub():
    with serve_stub() as s:
        s.delay_s = DELAY_S
        yield s


@pytest.fixture(scope="module")
def system(make_config, ray_local, stub):
    cfg = make_config("tools.tools.python.enabled=false", "tools.tools.math_expert.enabled=false",
                      "tools.tools.small_generalist.enabled=false", "tools.tools.large_generalist.enabled=false",
                      f"rollout.max_turns={TURNS}", "rollout.max_tokens_per_turn=96")
    cfg.tools.tools["remote"] = ToolConfig(kind="llm", model="stub-model", base_url=stub.base_url, timeout_s=30,
                                           price_in_per_mtok=1.0, price_out_per_mtok=1.0, max_concurrency=16,
                                           description="a remote model")
    cfg.rollout.constrained_tools = ["remote"]
    with System(validate(cfg)) as s:
        yield s


@pytest.fixture
def calls(stub):
    """The stub's record of this test's calls only."""
    stub.calls, stub.peak_in_flight, stub.intervals = 0, 0, []
    return stub


def run(system, lockstep: bool, max_in_flight: int) -> None:
    tasks = load_tasks(system.world_dir, "test")[:TRAJECTORIES]
    finished = []
    refs = system.rollout.submit(tasks, 1, lockstep=lockstep, max_in_flight=max_in_flight,
                                 on_done=lambda ref, n: finished.append(n))
    trajectories = [t for chunk in ray.get(refs) for t in chunk]
    assert len(trajectories) == TRAJECTORIES == sum(finished)
    assert all(len(t.tool_calls) == TURNS and t.tool_calls[0].result.error is None for t in trajectories)


def test_async_keeps_at_most_max_in_flight_trajectories(system, calls):
    run(system, lockstep=False, max_in_flight=2)
    assert calls.calls == TRAJECTORIES * TURNS
    assert calls.peak_in_flight == 2


def test_lockstep_runs_waves_whose_turns_wait_for_the_slowest_call(system, calls):
    run(system, lockstep=True, max_in_flight=3)
    intervals = sorted(calls.intervals)
    assert len(intervals) == TRAJECTORIES * TURNS and calls.peak_in_flight == 3
    # Waves of 3 trajectories, TURNS turns each: the calls come in batches of 3, and no call of a batch starts
    # before every call of the batch before it was answered (the turn barrier within a wave, then the next wave).
    batches = [intervals[i:i + 3] for i in range(0, len(intervals), 3)]
    for previous, batch in zip(batches, batches[1:]):
        assert min(start for start, _ in batch) >= max(end for _, end in previous)


def test_a_killed_rollout_worker_loses_no_trajectory(system, calls):
    """A second rollout worker joins, gets half the batch, and its process is SIGKILLed mid-batch: its
    trajectories run again on the first, every one finishes, and the dead worker leaves the pool."""
    cfg = copy.deepcopy(system.cfg)
    cfg.rollout.num_cpus_per_worker = 0  # the test cluster's CPUs are taken by the first worker and the tools
    extra = make_rollout_worker(cfg, system.model_path, system.executors, system.tool_schemas)
    ray.get(extra.ready.remote())
    victim = psutil.Process(ray.get(extra.pid.remote()))
    processes = [victim, *victim.children(recursive=True)]  # vLLM's engine core process too
    system.rollout.workers.append(extra)
    lost_before = system.rollout.lost_workers
    killer = threading.Thread(target=kill_once_under_way, args=(calls, victim))
    killer.start()
    try:
        tasks = load_tasks(system.world_dir, "test")[:TRAJECTORIES]
        refs = system.rollout.submit(tasks, 1, lockstep=False)
        trajectories = [t for chunk in ray.get(refs) for t in chunk]
    finally:
        killer.join()
        for p in processes:  # whatever the kill left behind, by id
            if p.is_running():
                p.kill()
        if extra in system.rollout.workers:
            system.rollout.workers.remove(extra)
    assert sorted(t.task_id for t in trajectories) == sorted(t.task_id for t in tasks)
    assert all(t.error is None and len(t.tool_calls) == TURNS for t in trajectories)
    assert system.rollout.lost_workers == lost_before + 1 and system.rollout.workers == [system.rollout.workers[0]]
    assert calls.calls >= TRAJECTORIES * TURNS


def kill_once_under_way(stub, victim: psutil.Process, timeout_s: float = 120.0) -> None:
    """SIGKILL `victim` as soon as the batch's first tool call reaches the stub: mid-step by construction."""
    deadline = time.monotonic() + timeout_s
    while stub.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
