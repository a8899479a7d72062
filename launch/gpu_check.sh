#!/usr/bin/env bash
# The GPU path in one go, on a CUDA machine with one GPU or more (never run by CI: it has none):
#   bash launch/gpu_check.sh
# installs the gpu extra, builds a Qwen3-0.6B-shaped policy locally (conf/model/qwen3_0_6b_shape.yaml, no hub),
# then
#   1. `bench step`: GRPO steps whose rollouts run through CUDA vLLM, whose updates run on FSDP2 over NCCL, each
#      followed by a collective (NCCL) weight sync, then the logprob agreement check (engine vs learner after the
#      sync), side by side with TRL's GRPOTrainer on the same GPU: tokens/s, step time, sync time;
#   2. `bench sync`: sync time against parameter bytes, both transports, at three widths of that shape.
# The reports land in outputs/bench/ (JSON); paste the printed tables into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "gpu_check: no CUDA GPU here (nvidia-smi)"; exit 1; }
bash launch/setup.sh --gpu

# One GPU shared by one engine and one learner (two NCCL ranks cannot share a GPU); more GPUs: raise the counts.
ngpu=$(nvidia-smi -L | wc -l)
if [ "$ngpu" -ge 2 ]; then share="rollout.num_gpus_per_worker=1 learner.num_gpus_per_learner=1"
else share="rollout.num_gpus_per_worker=0.5 learner.num_gpus_per_learner=0.5 rollout.engine.gpu_memory_utilization=0.35"; fi
GPU="model=qwen3_0_6b_shape rollout=gpu learner=gpu cluster.num_gpus=$ngpu rollout.num_workers=1 learner.num_learners=1
  rollout.num_cpus_per_worker=2 learner.num_cpus_per_learner=2 rollout.engine.max_model_len=4096 $share"

orchestra-rl bench step $GPU bench.step_prompts=32 bench.step_max_tokens=256 bench.step_steps=5
orchestra-rl bench sync $GPU "bench.sync_hidden_sizes=[256,512,1024]" bench.sync_repeats=5
