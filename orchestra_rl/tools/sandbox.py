"""Run untrusted, model-written Python in a bubblewrap sandbox with hard limits (docs/tools.md, "The python sandbox").

Isolation, per run:
- bubblewrap with every namespace unshared (no network: only a private, empty loopback), a new user namespace
  in which the program runs as uid 65534 with no capabilities (the bounding set is emptied too, so no setuid
  binary can regain any), and a filesystem of read-only /usr plus the Python installation only: the home folder,
  the host's /tmp and the project are not there. /tmp (also the working directory) is a private tmpfs.
- no inherited environment: bwrap itself starts with a minimal one (the sandbox sees bwrap in its /proc, and
  /proc/<pid>/environ would show whatever bwrap was started with), and the program gets --clearenv.
- rlimits (CPU seconds, data size, file size, no core dumps) set by `prlimit` on the launcher. RLIMIT_DATA
  rather than RLIMIT_AS: it counts what a process writes to (heap, anonymous maps, thread stacks) but not
  address space merely reserved (glibc's 64 MiB malloc arenas, shared libraries), which under RLIMIT_AS
  stopped numpy's threads and hung `import torch`.
- per-run cgroup v1 groups: `pids.max` bounds the process count and `memory.limit_in_bytes` the total memory.
  Both are needed because everything runs as root here: RLIMIT_NPROC is counted per real uid (and the
  sandbox's uid 65534 maps back to root, which the kernel exempts), while RLIMIT_DATA is per process only.
  After every run the freezer group is frozen, every process in it SIGKILLed, and the groups removed:
  removal fails while a single process is left, so a returned result means nothing was left behind.

The launcher is `/bin/sh` moving itself into the cgroups and exec-ing prlimit -> bwrap, rather than a
`preexec_fn`, which can deadlock when the calling process has threads (Ray actors do).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestra_rl.config import ToolConfig

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("pids", "memory", "freezer")
CGROUP_PARENT = "orchestra_rl"
SANDBOX_UID = 65534  # "nobody" inside the sandbox's user namespace
LAUNCHER_PROCESSES = 2  # bwrap and its pid-1 reaper count against pids.max besides the program's own
READ_CHUNK = 65536
# bwrap's own environment: /proc/1/environ inside the sandbox shows it, so it must carry nothing of the host.
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
MiB = 1 << 20


class SandboxUnavailable(RuntimeError):
    """The machine cannot run the sandbox safely; the message says what to fix."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run; the fields mirror ToolConfig's python fields (wall_timeout_s is its timeout_s)."""

    cpu_time_s: float
    wall_timeout_s: float
    memory_mb: int  # data size of each process, and total memory of the run (scratch /tmp included)
    max_processes: int  # processes and threads of the program at once
    max_file_mb: int  # size of any one file written
    max_output_bytes: int  # kept of stdout, and of stderr; more stops the program

    @classmethod
    def from_tool_config(cls, cfg: ToolConfig) -> SandboxLimits:
        return cls(
            cpu_time_s=cfg.cpu_time_s,
            wall_timeout_s=cfg.timeout_s,
            memory_mb=cfg.memory_mb,
            max_processes=cfg.max_processes,
            max_file_mb=cfg.max_file_mb,
            max_output_bytes=cfg.max_output_bytes,
        )


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int  # 128 + N when killed by signal N, as a shell reports it
    timed_out: bool
    # Which limit stopped the program, if one did: "wall timeout" | "cpu time limit" | "memory limit" |
    # "process limit" | "file size limit" | "output truncated".
    killed_reason: str | None
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SandboxUnavailable(f"{program} is not installed; the python tool needs it: apt-get install {package}")
    return path


def check_sandbox() -> None:
    """Raise SandboxUnavailable unless bwrap, prlimit and writable cgroup v1 controllers are all present."""
    _require("bwrap", "bubblewrap")
    _require("prlimit", "util-linux")
    for controller in CGROUP_CONTROLLERS:
        root = CGROUP_ROOT / controller
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            raise SandboxUnavailable(
                f"the python sandbox needs a writable cgroup v1 '{controller}' controller at {root} (run as root "
                "with cgroup v1 mounted); without it a fork bomb cannot be bounded or killed, so it will not run"
            )


class _RunCgroups:
    """This run's pids, memory and freezer groups, under <controller>/orchestra_rl/<uuid>."""

    def __init__(self, limits: SandboxLimits):
        name = uuid.uuid4().hex
        self.dirs = {c: CGROUP_ROOT / c / CGROUP_PARENT / name for c in CGROUP_CONTROLLERS}
        for d in self.dirs.values():
            d.mkdir(parents=True)
        (self.dirs["pids"] / "pids.max").write_text(str(limits.max_processes + LAUNCHER_PROCESSES))
        memory = self.dirs["memory"]
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_mb * MiB))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # with swap accounting: no swapping past it
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_mb * MiB))

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> list[int]:
        return [int(p) for p in (self.dirs["freezer"] / "cgroup.procs").read_text().split()]

    def counter(self, controller: str, file: str, key: str) -> int:
        """A counter from a flat-keyed file, e.g. pids.events "max" or memory.oom_control "oom_kill"."""
        for line in (self.dirs[controller] / file).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
        return 0

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


def _command(limits: SandboxLimits, cgroups: _RunCgroups) -> list[str]:
    python_dirs = sorted({sys.base_prefix, sys.prefix} - {"/usr"})
    cpu_s = max(1, math.ceil(limits.cpu_time_s))
    launcher = [
        # Join every cgroup first, so bwrap and all it starts are inside them from their first instruction.
        "/bin/sh", "-c", 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"',
        "sh", *cgroups.procs_files(), "--",
        _require("prlimit", "util-linux"),
        f"--cpu={cpu_s}:{cpu_s + 1}",  # SIGXCPU at the soft limit, SIGKILL one second later
        f"--data={limits.memory_mb * MiB}",
        f"--fsize={limits.max_file_mb * MiB}",
        "--core=0",
        "--",
    ]
    bwrap = [
        _require("bwrap", "bubblewrap"),
        # --unshare-all alone skips the user namespace where it cannot create one; --unshare-user insists.
        "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL", "--die-with-parent", "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
        "--ro-bind-try", "/etc/localtime", "/etc/localtime",
        # The private /tmp first, the Python installation after: bwrap mounts in order, and a virtual environment
        # under /tmp (usual in CI and containers) would be hidden by a tmpfs mounted over it.
        "--size", str(limits.memory_mb * MiB), "--tmpfs", "/tmp",
        *[arg for d in python_dirs for arg in ("--ro-bind", d, d)],
        "--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp",
        "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
        "--",
        # -I: ignore PYTHON* variables and the user site; -u: a killed program still shows what it printed;
        # "-": the program comes on stdin (any length; argv is capped at 128 KiB per argument).
        sys.executable, "-I", "-u", "-",
    ]
    return launcher + bwrap


async def _read_capped(stream: asyncio.StreamReader, cap: int, overflow: asyncio.Event) -> bytes:
    """Keep the first `cap` bytes; past them, set `overflow` (the caller then kills the run) and discard.

    Reading goes on to EOF: a stream left unread pauses its pipe, and asyncio's wait() then never returns.
    """
    kept = bytearray()
    while chunk := await stream.read(READ_CHUNK):
        if len(kept) + len(chunk) > cap:
            overflow.set()
        kept += chunk[: cap - len(kept)]
    return bytes(kept)


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError):  # the sandbox died before reading; its stderr says why
        return


def _limit_hit(exit_code: int, stderr: str, oom_kills: int, pid_limit_hits: int) -> str | None:
    """Which limit ended a program that exited non-zero on its own (Python turns most of them into exceptions)."""
    last_line = stderr.rstrip().rpartition("\n")[2]
    if oom_kills or last_line.startswith("MemoryError"):
        return "memory limit"
    if pid_limit_hits and last_line.startswith(("BlockingIOError", "RuntimeError: can't start new thread")):
        return "process limit"
    if exit_code == 128 + signal.SIGXCPU:
        return "cpu time limit"
    if exit_code == 128 + signal.SIGXFSZ or last_line.startswith("OSError: [Errno 27]"):  # EFBIG
        return "file size limit"
    return None


async def run_sandboxed_async(code: str, limits: SandboxLimits) -> SandboxResult:
    """Run `code` with `python -` in the sandbox; safe to run many at once in one event loop."""
    check_sandbox()
    start = time.monotonic()
    cgroups = _RunCgroups(limits)
    io: asyncio.Future | None = None
    overflowed: asyncio.Future | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *_command(limits, cgroups),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=BWRAP_ENV,
            cwd="/",
        )
        overflow = asyncio.Event()
        io = asyncio.gather(
            _read_capped(proc.stdout, limits.max_output_bytes, overflow),
            _read_capped(proc.stderr, limits.max_output_bytes, overflow),
            # surrogatepass: a lone surrogate from JSON becomes a SyntaxError of the program, not of this tool
            _feed(proc.stdin, code.encode(errors="surrogatepass")),
            proc.wait(),
        )
        overflowed = asyncio.ensure_future(overflow.wait())
        done, _ = await asyncio.wait(
            {io, overflowed}, timeout=limits.wall_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        # Always kill the whole group: the program may have left background processes behind.
        await asyncio.to_thread(cgroups.kill_all)
        stdout, stderr, _, returncode = await io
        exit_code = 128 - returncode if returncode < 0 else returncode
        stderr_text = stderr.decode(errors="replace")
        if overflow.is_set():
            killed_reason = "output truncated"
        elif io not in done:
            killed_reason = "wall timeout"
        elif exit_code != 0:
            killed_reason = _limit_hit(
                exit_code,
                stderr_text,
                oom_kills=cgroups.counter("memory", "memory.oom_control", "oom_kill"),
                pid_limit_hits=cgroups.counter("pids", "pids.events", "max"),
            )
        else:
            killed_reason = None
        return SandboxResult(
            stdout=stdout.decode(errors="replace"),
            stderr=stderr_text,
            exit_code=exit_code,
            timed_out=killed_reason == "wall timeout",
            killed_reason=killed_reason,
            duration_s=time.monotonic() - start,
        )
    finally:
        for pending in (io, overflowed):  # pending only when cancelled from outside
            if pending is not None:
                pending.cancel()
        # In a thread, so the cleanup completes even if this task is cancelled again while waiting for it.
        await asyncio.to_thread(cgroups.destroy)


def run_sandboxed(code: str, limits: SandboxLimits) -> SandboxResult:
    """Blocking form of `run_sandboxed_async`, for callers without a running event loop."""
    return asyncio.run(run_sandboxed_async(code, limits))


def sandbox_main(code: str, cfg: ToolConfig) -> int:
    """`orchestra-rl sandbox -c CODE`: run one snippet with the python tool's limits and print the result as JSON."""
    result = run_sandboxed(code, SandboxLimits.from_tool_config(cfg))
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.exit_code == 0 and result.killed_reason is None else 1
