"""The two confinements of a sandbox run (tools/sandbox.py says when each is chosen): what bounds its processes
and how all of them are killed at its end.

  Cgroup1Run     root with writable cgroup v1 controllers: per-run pids, memory and freezer groups
  NamespaceRun   any uid: RLIMIT_NPROC inside the run's user namespace, teardown of its pid namespace

Each gives the sandbox's launcher the commands to run before bwrap (`outside`) and before the program inside it
(`inside`), learns bwrap's init pid (`started`), and kills (`kill_all`) and proves empty (`destroy`) the run.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("pids", "memory", "freezer")
CGROUP_PARENT = "orchestra_rl"
SANDBOX_UID = 65534  # "nobody" inside the sandbox's user namespace (and the uid a root caller drops to in userns)
LAUNCHER_PROCESSES = 2  # bwrap and its pid-1 reaper count against pids.max besides the program's own
NAMESPACE_INIT = 1  # bwrap's pid-1 reaper runs as the sandbox's uid, so RLIMIT_NPROC counts it too
MiB = 1 << 20


class SandboxUnavailable(RuntimeError):
    """The machine cannot run the sandbox safely; the message says what to fix."""


def require_program(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SandboxUnavailable(f"{program} is not installed; the python tool needs it: apt-get install {package}")
    return path


class Cgroup1Run:
    """This run's pids, memory and freezer groups, under <controller>/orchestra_rl/<uuid>."""

    mode = "cgroup1"

    def __init__(self, max_processes: int, memory_mb: int):
        name = uuid.uuid4().hex
        self.dirs = {c: CGROUP_ROOT / c / CGROUP_PARENT / name for c in CGROUP_CONTROLLERS}
        for d in self.dirs.values():
            d.mkdir(parents=True)
        (self.dirs["pids"] / "pids.max").write_text(str(max_processes + LAUNCHER_PROCESSES))
        memory = self.dirs["memory"]
        (memory / "memory.limit_in_bytes").write_text(str(memory_mb * MiB))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # with swap accounting: no swapping past it
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_mb * MiB))

    def outside(self) -> list[str]:
        """Before prlimit and bwrap: join every group first, so that all they start is inside from its first
        instruction."""
        procs = [str(d / "cgroup.procs") for d in self.dirs.values()]
        return ["/bin/sh", "-c", 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"',
                "sh", *procs, "--"]

    def inside(self) -> list[str]:
        return []

    def started(self, info: dict[str, Any]) -> None:
        pass

    def pids(self) -> list[int]:
        return [int(p) for p in (self.dirs["freezer"] / "cgroup.procs").read_text().split()]

    def counter(self, controller: str, file: str, key: str) -> int:
        """A counter from a flat-keyed file, e.g. pids.events "max" or memory.oom_control "oom_kill"."""
        for line in (self.dirs[controller] / file).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
        return 0

    def limit_counters(self) -> tuple[int, int]:
        """(OOM kills, times the process limit was hit)."""
        return self.counter("memory", "memory.oom_control", "oom_kill"), self.counter("pids", "pids.events", "max")

    def kill_all(self) -> None:
        """Freeze the group so nothing can fork, SIGKILL every member, thaw so the kills take effect."""
        state = self.dirs["freezer"] / "freezer.state"
        state.write_text("FROZEN")
        deadline = time.monotonic() + 5
        while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.001)
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # exited since the listing
                continue
        state.write_text("THAWED")

    def destroy(self, timeout_s: float = 10.0) -> None:
        """Kill whatever is left and remove the groups; raise if a process survives."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.kill_all()
            if not self.pids():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandbox processes survived SIGKILL: {self.pids()} in {self.dirs['freezer']}")
            time.sleep(0.01)
        for d in self.dirs.values():
            # rmdir fails (EBUSY) while a process is in the group: the final proof that none is left
            _rmdir_when_empty(d, deadline)


def _rmdir_when_empty(path: Path, deadline: float) -> None:
    # A killed process leaves the pids/memory groups only once it is reaped, a moment after SIGKILL.
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class NamespaceRun:
    """This run's bound (RLIMIT_NPROC inside its user namespace) and teardown (its pid namespace's init)."""

    mode = "userns"

    def __init__(self, max_processes: int):
        self.max_processes = max_processes
        self.init_pidfd: int | None = None

    def outside(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        # RLIMIT_NPROC does not bind root: the run's processes get a uid of their own on the host.
        return [require_program("setpriv", "util-linux"), f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                "--clear-groups", "--"]

    def inside(self) -> list[str]:
        # Set inside the new user namespace, where the kernel counts only this run's processes against it (set
        # before, it would also be the limit of the caller's uid on the host, which counts all its processes).
        nproc = self.max_processes + NAMESPACE_INIT
        return [require_program("prlimit", "util-linux"), f"--nproc={nproc}:{nproc}", "--"]

    def started(self, info: dict[str, Any]) -> None:
        """bwrap reported its init's pid: hold it by a pidfd, which no later process can reuse."""
        try:
            self.init_pidfd = os.pidfd_open(info["child-pid"])
        except ProcessLookupError:  # the run is already over, and with it the namespace
            self.init_pidfd = None

    def limit_counters(self) -> tuple[int, int]:
        # No counters without cgroups: a fork refused with EAGAIN here is the process limit, a MemoryError the data
        # limit (both seen in the program's last stderr line).
        return 0, 1

    def kill_all(self) -> None:
        if self.init_pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def destroy(self, timeout_s: float = 10.0) -> None:
        """Kill the namespace's init and wait until it is gone: the kernel lets pid 1 of a pid namespace finish
        exiting only once every other process in it has, so its end proves that nothing is left."""
        if self.init_pidfd is None:
            return
        try:
            self.kill_all()
            poller = select.poll()
            poller.register(self.init_pidfd, select.POLLIN)  # readable once the process has exited
            if not poller.poll(timeout_s * 1000):
                raise RuntimeError(f"the sandbox's pid namespace survived SIGKILL of its init ({timeout_s} s)")
        finally:
            os.close(self.init_pidfd)
            self.init_pidfd = None
