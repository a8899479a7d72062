#!/usr/bin/env bash
# Submit an orchestra-rl command to a running Ray cluster as a Ray job.
#   RAY_ADDRESS=http://HEAD:8265 bash launch/submit.sh train model=qwen3_8b rollout=gpu cluster=gpu_node
# The cluster runs with token authentication (docs/cluster.md): the client sends the head's token from
# ~/.ray/auth_token (copy it from the head node), $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:=http://127.0.0.1:8265}"
export RAY_AUTH_MODE=token
# The working directory (this checkout) is shipped with the job; inside it, Ray sets RAY_ADDRESS and the job
# attaches with cluster.address=auto.
exec ray job submit --address "$RAY_ADDRESS" --working-dir . \
  --runtime-env-json '{"excludes": ["outputs", "multirun", "wandb", ".git"]}' \
  -- python -m orchestra_rl.cli "$@" cluster.address=auto
