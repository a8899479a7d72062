"""The sandbox's hostile battery (test_sandbox.py) in the userns confinement, each run in a process of its own:
as an unprivileged user (uid 65534: what a non-root container on a cgroup v2 machine is), and as root forced to
userns (which drops to uid 65534 so that RLIMIT_NPROC binds).

Such a user cannot read this machine's Python installation (under /root, mode 0700) nor, perhaps, the checkout.
Each run gets a private mount namespace (`unshare --mount`, gone with the process) in which the folder hiding
them is covered by an empty tmpfs and both are bound back at their own paths, as a user's own readable
installation would be.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import require

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534

pytestmark = pytest.mark.integration


def hidden_by(path: Path) -> Path | None:
    """The outermost folder above `path` that other users cannot enter (e.g. /root, mode 0700), if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return parent
    return None


def run_battery_in_view(uid: int | None) -> subprocess.CompletedProcess:
    """pytest tests/tools/test_sandbox.py under ORCHESTRA_SANDBOX_MODE=userns, as `uid` (None: as root), in a
    private mount namespace where the Python installation and the checkout are readable at their own paths: a
    folder that hides them is covered by an empty tmpfs into which both are bound back."""
    # Outside /tmp: the sandbox binds the interpreter inside its private /tmp otherwise, where programs list it.
    view = Path(tempfile.mkdtemp(prefix="orchestra-view-", dir="/var/tmp"))
    try:
        view.chmod(0o755)
        for d in ("py", "repo", "home"):
            (view / d).mkdir()
        os.chown(view / "home", NOBODY, NOBODY)
        prefix = Path(sys.base_prefix)
        script = ['mount --bind "$1" "$3/py"', 'mount --bind "$2" "$3/repo"']
        for hidden in {h for h in (hidden_by(prefix), hidden_by(REPO)) if h}:
            script.append(f"mount -t tmpfs -o mode=755 tmpfs {hidden}")
        script += ['mkdir -p "$1" "$2"', 'mount --bind "$3/py" "$1"', 'mount --bind "$3/repo" "$2"', 'cd "$2"',
                   "shift 3", 'exec "$@"']
        drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
        env = [f"HOME={view}/home", "PATH=/usr/bin:/bin", "LANG=C.UTF-8", "CI=true", "ORCHESTRA_SANDBOX_MODE=userns"]
        pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
                       f"--basetemp={view}/home/pytest", "tests/tools/test_sandbox.py"]
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(script), "sh", str(prefix),
               str(REPO), str(view), *drop, "env", "-i", *env, *pytest_argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(view, ignore_errors=True)


def passed_count(proc: subprocess.CompletedProcess) -> int:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "skipped" not in summary and "failed" not in summary, summary
    return int(re.search(r"(\d+) passed", summary).group(1))


@pytest.fixture(scope="module")
def battery_size() -> int:
    require(os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("setpriv") is not None,
            "the userns battery needs root (a private mount namespace per run), unshare and setpriv")
    require(sys.prefix == sys.base_prefix, "the userns battery runs the base interpreter, not a virtual environment")
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "",
                             "tests/tools/test_sandbox.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    return int(re.search(r"(\d+) tests? collected", listed.stdout).group(1))


def test_the_battery_holds_as_an_unprivileged_user(battery_size):
    assert passed_count(run_battery_in_view(NOBODY)) == battery_size


def test_the_battery_holds_in_userns_as_root_by_dropping_the_uid(battery_size):
    assert passed_count(run_battery_in_view(None)) == battery_size
