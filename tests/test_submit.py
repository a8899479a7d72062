"""`launch/submit.sh` end to end: a real `ray start --head` cluster on 127.0.0.1 (token authentication on, as Ray
2.60 starts it), a job submitted with `ray job submit` that attaches to it (cluster.address=auto) and runs
`orchestra-rl eval` on it."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import PRETRAIN, free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture
def ray_head(monkeypatch):
    """A head node of its own: own ports, own temp dir (so /tmp/ray/ray_current_cluster, which a bare ray.init()
    would join, is not touched), own auth token, stopped by its process id — never `ray stop`, which would stop
    every Ray on the machine."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    # Token auth on, with a token of this test's (Ray's own format: 32 random bytes in hex), not ~/.ray/auth_token.
    # Without RAY_AUTH_MODE=token and with no token anywhere, `ray start` would run without authentication.
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    dashboard = free_port()
    cmd = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}", "--num-cpus=4", "--num-gpus=0",
           # Its own agent port too: the default (52365) is taken whenever another Ray runs here (the other
           # tests' embedded Ray), and a head without its agent accepts no job.
           f"--dashboard-agent-listen-port={free_port()}"]
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        # Ready when a trivial job runs: the job server answers before its agent registers ("No available agent
        # to submit job, please try again later").
        deadline = time.monotonic() + 180
        while True:
            probe = subprocess.run(["ray", "job", "submit", "--address", address, "--", "python", "-c",
                                    "print('ready')"], capture_output=True, text=True)
            if probe.returncode == 0 and "ready" in probe.stdout:
                break
            assert head.poll() is None, f"ray start exited: {head.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no job ran on the head in 180 s: {probe.stderr[-2000:]}"
            time.sleep(2)
        yield address
    finally:
        head.terminate()  # `ray start --block` drains the node and stops the processes it started
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cluster_refuses_a_client_with_another_token(ray_head, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    proc = subprocess.run(["ray", "job", "list", "--address", ray_head], capture_output=True, text=True,
                          env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(wrong)})
    assert proc.returncode != 0


def test_submitted_eval_job_runs_on_the_cluster(ray_head, cache_dir, tmp_path):
    out = tmp_path / "eval"  # absolute: the job runs in Ray's copy of the checkout, on this same machine
    overrides = ["env=qa", f"model.cache_dir={cache_dir}/models", PRETRAIN, f"data.cache_dir={cache_dir}/worlds",
                 "data.tasks_per_family=8", "eval.max_tasks=4", "eval.group_size=2", f"eval.output_dir={out}",
                 f"serve.port={free_port()}", "serve.latency_scale=0.01", "rollout.max_turns=3",
                 "rollout.constrained_tools=[python,search,math_expert,answer]"]
    proc = subprocess.run(["bash", str(REPO / "launch" / "submit.sh"), "eval", *overrides], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "RAY_ADDRESS": ray_head})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr

    (run_dir,) = list(out.iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    assert report["config"]["cluster"]["address"] == "auto"  # attached to the head, not an embedded Ray
    assert report["overall"]["trajectories"] == 8
    assert set(report["families"]) == {"arithmetic", "lookup", "multihop", "hard"}
    assert report["overall"]["parse_errors"] == 0
