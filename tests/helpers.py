"""Small helpers shared by test modules."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

import psutil

import pytest

from orchestra_rl.types import Task, ToolCallRecord, ToolResult, Trajectory, Turn


_handed_out: set[int] = set()
_ports = random.Random()  # its own generator: a test that seeds `random` does not make the ports repeat


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (and above Ray's worker ports, 10002-19999). A port
    the kernel hands out for bind(0) is one Ray's own processes may be given too, between this call and the moment
    a command binds it (CI once lost Serve's port that way); this range is handed out only on request."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in _ports.sample(range(20000, low), 500):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in 20000-{low - 1}")


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session=True and every process of its session (a command's Ray, its
    workers), by id, as a crash would end them; wait until they are gone."""
    session = [p for p in psutil.process_iter() if _session_of(p.pid) == proc.pid]
    for p in session:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(session, timeout=60)


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def require(condition: bool, reason: str) -> None:
    """Skip the test unless `condition` holds: a real part it needs is missing on this machine. On CI (CI=true)
    fail instead, so that a run which never exercised that part cannot pass."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, yet {reason}", pytrace=False)
    pytest.skip(reason)


def require_sandbox(mode: str = "auto") -> None:
    """`require` the python tool's sandbox in `mode` (tools/sandbox.py: bubblewrap, prlimit, and writable cgroup
    v1 controllers or user namespaces)."""
    from orchestra_rl.tools.sandbox import SandboxUnavailable, check_sandbox

    try:
        check_sandbox(mode)
    except SandboxUnavailable as e:
        require(False, str(e))


def policy_segments(trajectory) -> list[list[int]]:
    """The runs of tokens the policy sampled (loss_mask 1), one per turn."""
    segments, previous = [], 0
    for token, m in zip(trajectory.token_ids, trajectory.loss_mask):
        if m and not previous:
            segments.append([])
        if m:
            segments[-1].append(token)
        previous = m
    return segments


def make_trajectory(task_id: str = "t", answer: str | None = "1", calls: tuple = (), policy_cost: float = 0.0,
                    group_index: int = 0, family: str = "arithmetic") -> Trajectory:
    """`calls`: (tool name, cost $, latency s) each in a turn of its own, so latencies add up."""
    turns = [Turn(text="", num_tokens=1, finish_reason="tool_call",
                  calls=[ToolCallRecord(turn=i, name=name, arguments={}, result=ToolResult("", cost, latency))])
             for i, (name, cost, latency) in enumerate(calls)]
    return Trajectory(task_id=task_id, family=family, group_index=group_index, token_ids=[1, 2],
                      logprobs=[0.0, -0.5], loss_mask=[0, 1], prompt_length=1, turns=turns, final_answer=answer,
                      stop_reason="answer", policy_cost_usd=policy_cost)


def make_task(task_id: str = "t", answer: str = "1", family: str = "arithmetic", **kwargs) -> Task:
    return Task(task_id=task_id, family=family, question=f"question of {task_id}", answer=answer, **kwargs)


# The test session's tiny model: copy pretraining runs (models/pretrain.py), briefly; every command a test starts
# builds or finds the same model folder with it.
PRETRAIN = "model.pretrain_steps=20"
