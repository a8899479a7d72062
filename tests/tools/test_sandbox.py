"""The bubblewrap sandbox against hostile programs: isolation, limits, and that nothing is left running.

Leftover processes are looked for by a unique marker: the program re-executes itself with the marker as an
argument, so every process it forks carries it in its command line, visible to psutil from the host.

The battery runs in the confinement this machine chooses (cgroup1 as root here), and again, by
test_sandbox_modes.py, in a process of its own under ORCHESTRA_SANDBOX_MODE=userns: as an unprivileged user, and
as root dropping its uid.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from orchestra_rl.cli import main
from orchestra_rl.config import ToolConfig
from orchestra_rl.tools.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    check_sandbox,
    run_sandboxed,
    run_sandboxed_async,
)
from tests.helpers import require_sandbox


MODE = os.environ.get("ORCHESTRA_SANDBOX_MODE", "auto")  # the confinement under test


@pytest.fixture
def limits() -> SandboxLimits:
    require_sandbox(MODE)
    defaults = SandboxLimits.from_tool_config(ToolConfig(kind="python", sandbox=MODE))
    return replace(defaults, cpu_time_s=1, wall_timeout_s=5, memory_mb=256, max_file_mb=4, max_output_bytes=1000)


def marked(program: str, marker: str) -> str:
    """`program`, run by a python process whose argv (and so every fork's) carries `marker`."""
    return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {program!r}, {marker!r}])"


def processes_with(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


@pytest.mark.integration
async def test_prints_result(limits):
    result = await run_sandboxed_async("print(2+2)", limits)
    assert (result.stdout, result.stderr, result.exit_code, result.killed_reason) == ("4\n", "", 0, None)
    assert not result.timed_out and 0 < result.duration_s < 5
    assert result.mode == check_sandbox(MODE) and (MODE == "auto" or result.mode == MODE)


@pytest.mark.integration
async def test_exit_code_and_traceback_are_reported(limits):
    result = await run_sandboxed_async("print('before')\nraise ValueError('boom')", limits)
    assert result.stdout == "before\n"
    assert result.stderr.endswith("ValueError: boom\n")
    assert (result.exit_code, result.killed_reason) == (1, None)


@pytest.mark.integration
async def test_lone_surrogate_is_a_program_error(limits):
    result = await run_sandboxed_async("print('\ud800')", limits)
    assert result.exit_code == 1 and "SyntaxError" in result.stderr


@pytest.mark.integration
async def test_network_is_unreachable(limits):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""
import socket
for address in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
    try:
        socket.create_connection(address, timeout=2)
        print("connected", address[0])
    except OSError as e:
        print("blocked", address[0], type(e).__name__)
"""
    try:
        result = await run_sandboxed_async(code, limits)
        assert result.stdout.splitlines() == [
            "blocked 127.0.0.1 ConnectionRefusedError",  # the sandbox's own, empty loopback
            "blocked 1.1.1.1 OSError",  # network unreachable: no interface but lo
        ]
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing reached the host's server...
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        server.accept()[0].close()  # ...which does accept connections from the host
    finally:
        server.close()


@pytest.mark.integration
async def test_host_environment_is_invisible(limits, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    code = """
import glob, os
print(sorted(os.environ.items()))
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/task/*/environ"):
    print(path, sorted(entry.partition(b"=")[0] for entry in open(path, "rb").read().split(b"\\0") if entry))
"""
    result = await run_sandboxed_async(code, limits)
    assert result.exit_code == 0, result.stderr
    assert "sk-test-secret" not in result.stdout and "OPENAI_API_KEY" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "[('HOME', '/tmp'), ('LANG', 'C.UTF-8'), ('PATH', '/usr/bin:/bin'), ('PWD', '/tmp')]"
    # Every process of the sandbox was read, bwrap's pid-1 reaper included; none holds more than these.
    assert any(line.startswith("/proc/1/environ ") for line in lines)
    for line in lines[1:]:
        assert set(ast.literal_eval(line.split(" ", 1)[1])) <= {b"HOME", b"LANG", b"PATH", b"PWD"}, line


@pytest.mark.integration
async def test_host_files_are_invisible_and_system_read_only(limits):
    name = f"orchestra-sandbox-probe-{uuid.uuid4().hex}"
    host_tmp, host_home = Path("/tmp") / name, Path.home() / name
    code = f"""
import os
for path in [{str(host_tmp)!r}, {str(host_home)!r}, "/work", "/etc/passwd", {str(Path.home() / ".cache")!r}]:
    print(path, os.path.exists(path))
print("tmp", os.listdir("/tmp"), os.getcwd())
for path in ["/usr/owned", "/tmp/scratch"]:
    try:
        open(path, "w").write("x")
        print(path, "writable")
    except OSError as e:
        print(path, type(e).__name__)
"""
    host_tmp.write_text("host secret")
    host_home.write_text("host secret")
    try:
        result = await run_sandboxed_async(code, limits)
    finally:
        host_tmp.unlink()
        host_home.unlink()
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{host_tmp} False",
        f"{host_home} False",
        "/work False",
        "/etc/passwd False",
        f"{Path.home() / '.cache'} False",
        "tmp [] /tmp",
        "/usr/owned OSError",  # read-only file system
        "/tmp/scratch writable",
    ]


@pytest.mark.integration
async def test_infinite_loop_hits_cpu_limit(limits):
    result = await run_sandboxed_async("while True: pass", limits)
    assert result.killed_reason == "cpu time limit" and not result.timed_out
    assert result.duration_s < limits.cpu_time_s + 2


@pytest.mark.integration
async def test_sleeping_program_hits_wall_timeout(limits):
    marker = f"orchestra-sleeper-{uuid.uuid4().hex}"
    sleeper = marked("import time; time.sleep(100)", marker)
    result = await run_sandboxed_async(sleeper, replace(limits, wall_timeout_s=1))
    assert result.killed_reason == "wall timeout" and result.timed_out
    assert 1 <= result.duration_s < 1 + 2
    assert processes_with(marker) == []


@pytest.mark.integration
async def test_fork_bomb_is_contained_and_leaves_nothing(limits):
    marker = f"orchestra-fork-bomb-{uuid.uuid4().hex}"
    counts = []

    async def count_bomb_processes():
        while True:
            counts.append(len(processes_with(marker)))
            await asyncio.sleep(0.02)

    counter = asyncio.create_task(count_bomb_processes())
    bomb = marked("import os\nwhile True: os.fork()", marker)
    # Room for the tracebacks of every fork that failed, so that the output limit does not stop it first.
    result = await run_sandboxed_async(bomb, replace(limits, max_output_bytes=10**6))
    counter.cancel()
    assert result.killed_reason == "process limit"
    assert result.duration_s < 5
    assert 1 < max(counts) <= limits.max_processes  # it did fork, up to the cgroup's pids.max only
    assert processes_with(marker) == []


@pytest.mark.integration
async def test_background_processes_die_with_the_run(limits):
    marker = f"orchestra-daemon-{uuid.uuid4().hex}"
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\nprint('parent done')"
    result = await run_sandboxed_async(marked(daemon, marker), limits)
    assert (result.stdout, result.exit_code, result.killed_reason) == ("parent done\n", 0, None)
    assert processes_with(marker) == []


@pytest.mark.integration
async def test_cancelled_run_leaves_nothing(limits):
    marker = f"orchestra-cancelled-{uuid.uuid4().hex}"
    run = asyncio.create_task(run_sandboxed_async(marked("import time; time.sleep(100)", marker), limits))
    await asyncio.sleep(0.5)
    assert len(processes_with(marker)) == 1
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert processes_with(marker) == []


@pytest.mark.integration
@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(10**10)",
        "chunks = []\nwhile True: chunks.append(b'x' * 10**7)",
    ],
    ids=["at-once", "gradual"],
)
async def test_memory_bomb_hits_memory_limit(limits, code):
    result = await run_sandboxed_async(code, limits)
    assert result.killed_reason == "memory limit"
    # Whichever limit is reached first: the per-process data limit (Python raises MemoryError) or, in cgroup1, the
    # run's total (the kernel's OOM kill, SIGKILL). Under memory pressure the interpreter's evicted file pages are
    # charged to the run's cgroup as they are read back, and the total can be reached first (seen in CI).
    assert result.stderr.endswith("MemoryError\n") or (result.mode == "cgroup1"
                                                        and result.exit_code == 128 + signal.SIGKILL)


@pytest.mark.integration
async def test_memory_of_all_processes_together_is_limited_in_cgroup1(limits):
    # Each child stays under the per-process data limit; together they pass the cgroup's limit. The userns mode
    # bounds memory per process only (tools/sandbox.py): there the same program runs to its end.
    code = """
import os, sys, time
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = b"x" * (120 * 2**20)
        time.sleep(1)
        os._exit(0)
    children.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in children]
sys.exit(1 if any(os.WIFSIGNALED(s) for s in statuses) else 0)
"""
    result = await run_sandboxed_async(code, limits)
    if result.mode == "cgroup1":
        assert (result.exit_code, result.killed_reason) == (1, "memory limit")
    else:
        assert (result.mode, result.exit_code, result.killed_reason) == ("userns", 0, None)


@pytest.mark.integration
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_huge_output_is_truncated(limits, stream):
    result = await run_sandboxed_async(f"import sys\nprint('x' * 10**8, file=sys.{stream})", limits)
    assert getattr(result, stream) == "x" * limits.max_output_bytes
    assert result.killed_reason == "output truncated"
    assert result.duration_s < 5


@pytest.mark.integration
@pytest.mark.parametrize(
    "code",
    [
        "open('big', 'wb').write(b'x' * 5 * 2**20)",
        "f = open('big', 'wb')\nwhile True: f.write(b'x' * 2**16)",
    ],
    ids=["at-once", "gradual"],
)
async def test_file_size_bomb_is_limited(limits, code):
    result = await run_sandboxed_async(code, limits)
    assert result.killed_reason == "file size limit"
    assert "File too large" in result.stderr


@pytest.mark.integration
async def test_concurrent_runs_are_isolated_and_do_not_block_the_loop(limits):
    code = "import os, time\nopen('/tmp/run-{i}', 'w').write('x')\ntime.sleep(0.5)\nprint(sorted(os.listdir('/tmp')))"
    ticks = []

    async def tick():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    start = time.monotonic()
    results = await asyncio.gather(*(run_sandboxed_async(code.format(i=i), limits) for i in range(8)))
    elapsed = time.monotonic() - start
    ticker.cancel()
    assert [r.stdout for r in results] == [f"['run-{i}']\n" for i in range(8)]
    assert elapsed < 8 * 0.5  # they ran at once, not one after another
    # The event loop kept running meanwhile: a run that blocked it would leave a gap of its 0.5 s sleep
    # (the longest gap, not the tick count: on a loaded 2-core machine a tick can take 30 ms, not 10).
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 10 and max(gaps) < 0.4


@pytest.mark.integration
def test_sandbox_command_prints_result_json_under_the_configured_limits(limits, capsys):
    assert main(["sandbox", "-c", "print(2+2)", f"tools.tools.python.sandbox={MODE}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["stdout"], printed["exit_code"], printed["killed_reason"]) == ("4\n", 0, None)
    assert printed["mode"] == check_sandbox(MODE)

    assert main(["sandbox", "-c", "print('x' * 100)", "tools.tools.python.max_output_bytes=10",
                 f"tools.tools.python.sandbox={MODE}"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert (printed["stdout"], printed["killed_reason"]) == ("x" * 10, "output truncated")
    assert run_sandboxed("raise SystemExit(3)", limits).exit_code == 3


def test_sandbox_command_applies_the_configured_limits(limits, capsys):
    """`orchestra-rl sandbox` runs under tools.tools.python.* of the composed config, overrides included."""
    grab = "x = bytearray(200 * 1024 * 1024)\nprint('allocated')"
    mode = f"tools.tools.python.sandbox={MODE}"
    assert main(["sandbox", "-c", grab, mode]) == 0  # conf/tools/default.yaml: memory_mb 512
    assert json.loads(capsys.readouterr().out)["stdout"] == "allocated\n"
    assert main(["sandbox", "-c", grab, "tools.tools.python.memory_mb=64", mode]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["stdout"] == "" and "MemoryError" in printed["stderr"]
    with pytest.raises(SystemExit) as exited:  # the config is validated like every command's
        main(["sandbox", "-c", "print(1)", "tools.tools.python.memory_mb=0"])
    assert exited.value.code == 2 and "tools.tools.python.memory_mb" in capsys.readouterr().err


def test_a_virtual_environment_under_tmp_runs_code(limits, tmp_path_factory):
    """The interpreter of a venv under /tmp (CI, containers) must stay visible under the sandbox's private /tmp."""
    import subprocess
    import sys

    venv = Path("/tmp") / f"orchestra-venv-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                       check=True, timeout=120)
        out = subprocess.run([str(venv / "bin" / "python"), "-m", "orchestra_rl.cli", "sandbox", "-c",
                              "import sys; print(sys.prefix)", f"tools.tools.python.sandbox={MODE}"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["stdout"] == f"{venv}\n"
    finally:
        import shutil

        shutil.rmtree(venv, ignore_errors=True)


def test_missing_bubblewrap_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        check_sandbox()
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_sandboxed("print(1)", SandboxLimits.from_tool_config(ToolConfig(kind="python")))


@pytest.mark.integration
def test_bench_sandbox_measures_this_machines_mode(limits, tmp_path):
    from orchestra_rl.bench.sandbox import run_sandbox_bench
    from orchestra_rl.config import load_config

    cfg = load_config([f"bench.output_dir={tmp_path}", "bench.sandbox_runs=20", "bench.sandbox_concurrency=2",
                       f"tools.tools.python.sandbox={MODE}"])
    report = run_sandbox_bench(cfg)
    r = report["runs"][check_sandbox(MODE)]
    assert r["runs"] == 20 and r["executions_per_s"] == pytest.approx(20 / r["wall_s"])
    assert 0 < r["p50_s"] <= r["p99_s"] <= r["max_s"] < limits.wall_timeout_s
    assert json.loads(next(tmp_path.glob("sandbox-*.json")).read_text())["runs"] == report["runs"]
