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
- the processes of a run are bounded, and all killed at its end, by one of two confinements, chosen at start-up
  (`check_sandbox`; the python tool's `sandbox` field: auto | cgroup1 | userns):
  cgroup1  root with writable cgroup v1 controllers: per-run pids, memory and freezer groups. `pids.max` bounds
           the process count and `memory.limit_in_bytes` the total memory of the run (RLIMIT_NPROC would not:
           the sandbox's uid maps back to root, which the kernel exempts). After every run the freezer group is
           frozen, every process in it SIGKILLed, and the groups removed: removal fails while a single process
           is left, so a returned result means nothing was left behind.
  userns   no cgroup needed (cgroup v2 machines, non-root containers): RLIMIT_NPROC, set inside the sandbox's
           user namespace, bounds its processes (the kernel counts them per user namespace, since Linux 5.14);
           it applies only to a non-root uid, so a root caller first drops to uid 65534 (`setpriv`). At the end
           bwrap's init, pid 1 of the run's pid namespace, is SIGKILLed through a pidfd: the kernel then kills
           every process of the namespace and the init is reaped only once all are gone, which is awaited.
           Memory is bounded per process (RLIMIT_DATA) and so in total by memory_mb x max_processes, not by
           memory_mb: the one weaker guarantee of this mode.

The launcher (`/bin/sh` moving itself into the cgroups, `setpriv` dropping root) exec-ing prlimit -> bwrap,
rather than a `preexec_fn`, which can deadlock when the calling process has threads (Ray actors do).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from orchestra_rl.config import ToolConfig
from orchestra_rl.config.schema import SANDBOX_MODES
from orchestra_rl.tools.confinement import (
    CGROUP_CONTROLLERS,
    CGROUP_ROOT,
    SANDBOX_UID,
    Cgroup1Run,
    MiB,
    NamespaceRun,
    SandboxUnavailable,
    require_program,
)

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailable", "check_sandbox", "run_sandboxed",
           "run_sandboxed_async", "sandbox_main"]

READ_CHUNK = 65536
# bwrap's own environment: /proc/1/environ inside the sandbox shows it, so it must carry nothing of the host.
BWRAP_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run; the fields mirror ToolConfig's python fields (wall_timeout_s is its timeout_s)."""

    cpu_time_s: float
    wall_timeout_s: float
    memory_mb: int  # data size of each process, and total memory of the run (scratch /tmp included)
    max_processes: int  # processes and threads of the program at once
    max_file_mb: int  # size of any one file written
    max_output_bytes: int  # kept of stdout, and of stderr; more stops the program
    mode: str = "auto"  # the confinement: auto | cgroup1 | userns (module docstring)

    @classmethod
    def from_tool_config(cls, cfg: ToolConfig) -> SandboxLimits:
        return cls(
            cpu_time_s=cfg.cpu_time_s,
            wall_timeout_s=cfg.timeout_s,
            memory_mb=cfg.memory_mb,
            max_processes=cfg.max_processes,
            max_file_mb=cfg.max_file_mb,
            max_output_bytes=cfg.max_output_bytes,
            mode=cfg.sandbox,
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
    mode: str  # the confinement it ran under: cgroup1 | userns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cgroup1_problem() -> str | None:
    if os.geteuid() != 0:
        return "cgroup1 needs root"
    for controller in CGROUP_CONTROLLERS:
        root = CGROUP_ROOT / controller
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            return f"cgroup1 needs a writable cgroup v1 '{controller}' controller at {root}"
    return None


def _userns_problem() -> str | None:
    """Why the userns confinement cannot run here, found by running a trivial program in it; None if it can.
    Blocking, once per process (`_choose_mode` caches it)."""
    limits = SandboxLimits(cpu_time_s=5, wall_timeout_s=20, memory_mb=256, max_processes=4, max_file_mb=1,
                           max_output_bytes=1000, mode="userns")
    try:
        probe = subprocess.run(_command(limits, NamespaceRun(limits.max_processes), None), input=b"print(6 * 7)",
                               capture_output=True, env=BWRAP_ENV, cwd="/", timeout=limits.wall_timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"userns could not run a trivial program: {e}"
    if probe.returncode == 0 and probe.stdout == b"42\n":
        return None
    why = (probe.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
    if os.geteuid() == 0:
        return (f"userns, as root, drops to uid {SANDBOX_UID}, and a trivial program failed there ({why}): the "
                f"Python installation ({sys.base_prefix}) must be readable by that uid; or run as a non-root user")
    return (f"userns failed on a trivial program ({why}): bwrap needs unprivileged user namespaces "
            "(sysctl user.max_user_namespaces > 0, and kernel.unprivileged_userns_clone=1 where it exists)")


def check_sandbox(requested: str = "auto") -> str:
    """The confinement this process runs programs under: `requested`, or for auto cgroup1 where it is available,
    else userns (chosen once per process). SandboxUnavailable, naming what to fix, when none can run."""
    require_program("bwrap", "bubblewrap")
    require_program("prlimit", "util-linux")
    if requested not in SANDBOX_MODES:
        raise SandboxUnavailable(f"unknown sandbox mode {requested!r}; known: {', '.join(SANDBOX_MODES)}")
    return _choose_mode(requested)


@functools.cache
def _choose_mode(requested: str) -> str:
    problems = []
    if requested in ("auto", "cgroup1"):
        if (problem := _cgroup1_problem()) is None:
            return "cgroup1"
        problems.append(problem)
    if requested in ("auto", "userns"):
        if os.geteuid() == 0:
            require_program("setpriv", "util-linux")
        if (problem := _userns_problem()) is None:
            return "userns"
        problems.append(problem)
    raise SandboxUnavailable("the python sandbox cannot bound and kill what a program starts here, so it will not "
                             "run: " + "; ".join(problems))


def _command(limits: SandboxLimits, run: Cgroup1Run | NamespaceRun, info_fd: int | None) -> list[str]:
    python_dirs = sorted({sys.base_prefix, sys.prefix} - {"/usr"})
    cpu_s = max(1, math.ceil(limits.cpu_time_s))
    launcher = [
        *run.outside(),
        require_program("prlimit", "util-linux"),
        f"--cpu={cpu_s}:{cpu_s + 1}",  # SIGXCPU at the soft limit, SIGKILL one second later
        f"--data={limits.memory_mb * MiB}",
        f"--fsize={limits.max_file_mb * MiB}",
        "--core=0",
        "--",
    ]
    bwrap = [
        require_program("bwrap", "bubblewrap"),
        # --unshare-all alone skips the user namespace where it cannot create one; --unshare-user insists.
        "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL", "--die-with-parent", "--new-session",
        *(["--info-fd", str(info_fd)] if info_fd is not None else []),
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
        *run.inside(),
        # -I: ignore PYTHON* variables and the user site; -u: a killed program still shows what it printed;
        # "-": the program comes on stdin (any length; argv is capped at 128 KiB per argument).
        sys.executable, "-I", "-u", "-",
    ]
    return launcher + bwrap


async def _bwrap_info(read_fd: int) -> dict[str, Any]:
    """What bwrap writes on its --info-fd (the init's pid), or {} if it ended without writing it."""
    def read() -> bytes:
        with os.fdopen(read_fd, "rb") as f:
            return f.read()

    data = await asyncio.to_thread(read)
    try:
        return json.loads(data) if data else {}
    except json.JSONDecodeError:
        return {}


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
    mode = check_sandbox(limits.mode)
    run = (Cgroup1Run(limits.max_processes, limits.memory_mb) if mode == "cgroup1"
           else NamespaceRun(limits.max_processes))
    return await _run(run, code, limits)


async def _run(run: Cgroup1Run | NamespaceRun, code: str, limits: SandboxLimits) -> SandboxResult:
    start = time.monotonic()
    io: asyncio.Future | None = None
    overflowed: asyncio.Future | None = None
    info_read, info_write = os.pipe() if isinstance(run, NamespaceRun) else (None, None)
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                *_command(limits, run, info_write),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=BWRAP_ENV,
                cwd="/",
                pass_fds=() if info_write is None else (info_write,),
            )
        finally:
            if info_write is not None:
                os.close(info_write)  # bwrap holds the only write end now: EOF once it wrote or died
        if info_read is not None:
            fd, info_read = info_read, None
            run.started(await _bwrap_info(fd))
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
        # Always kill the whole run: the program may have left background processes behind.
        await asyncio.to_thread(run.kill_all)
        stdout, stderr, _, returncode = await io
        exit_code = 128 - returncode if returncode < 0 else returncode
        stderr_text = stderr.decode(errors="replace")
        if overflow.is_set():
            killed_reason = "output truncated"
        elif io not in done:
            killed_reason = "wall timeout"
        elif exit_code != 0:
            oom_kills, pid_limit_hits = run.limit_counters()
            killed_reason = _limit_hit(exit_code, stderr_text, oom_kills=oom_kills, pid_limit_hits=pid_limit_hits)
        else:
            killed_reason = None
        return SandboxResult(
            stdout=stdout.decode(errors="replace"),
            stderr=stderr_text,
            exit_code=exit_code,
            timed_out=killed_reason == "wall timeout",
            killed_reason=killed_reason,
            duration_s=time.monotonic() - start,
            mode=run.mode,
        )
    finally:
        if info_read is not None:
            os.close(info_read)
        for pending in (io, overflowed):  # pending only when cancelled from outside
            if pending is not None:
                pending.cancel()
        # In a thread, so the cleanup completes even if this task is cancelled again while waiting for it.
        await asyncio.to_thread(run.destroy)


def run_sandboxed(code: str, limits: SandboxLimits) -> SandboxResult:
    """Blocking form of `run_sandboxed_async`, for callers without a running event loop."""
    return asyncio.run(run_sandboxed_async(code, limits))


def sandbox_main(code: str, cfg: ToolConfig) -> int:
    """`orchestra-rl sandbox -c CODE`: run one snippet with the python tool's limits and print the result as JSON."""
    result = run_sandboxed(code, SandboxLimits.from_tool_config(cfg))
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.exit_code == 0 and result.killed_reason is None else 1
