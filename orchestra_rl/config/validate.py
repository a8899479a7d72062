"""`validate`: the semantic checks a schema cannot express (ranges, cross-references such as a tool name that
does not exist, a missing price). The one place config values are checked: code that receives a validated config
trusts it; only facts of the running machine (an environment variable, a folder on disk) are checked at use."""

from __future__ import annotations

import re

from orchestra_rl.config.env import (
    BENCHMARK_LAYOUTS, ENV_KINDS, NL_ASSERTION_MODES, TAU2_DOMAINS, USER_KINDS, EndpointConfig, EnvSourceConfig,
)
from orchestra_rl.config.schema import SANDBOX_MODES, TASK_FAMILIES, TOOL_KINDS, Config, ToolConfig


class ConfigError(ValueError):
    """A configuration problem, always naming the offending key."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def _check_mcp(key: str, name: str, t: ToolConfig) -> None:
    _check(bool(t.command) != bool(t.url), f"{key}.command",
           "an mcp entry needs exactly one of command (a stdio server's argv) and url (a streamable HTTP endpoint)")
    _check(all(isinstance(a, str) and a for a in t.command), f"{key}.command", "must be a list of non-empty strings")
    _check(not t.url or re.fullmatch(r"https?://\S+", t.url) is not None, f"{key}.url",
           f"must be an http:// or https:// endpoint, got {t.url!r}")
    _check(not (t.env and t.url), f"{key}.env", "sets a stdio server's environment; this entry has a url")
    _check(re.fullmatch(r"[A-Za-z0-9_-]*", t.prefix) is not None, f"{key}.prefix",
           f"must be letters, digits, _ or -, got {t.prefix!r}")
    _check(len(set(t.include)) == len(t.include), f"{key}.include", "names a tool twice")
    _check(t.max_reply_chars > 0, f"{key}.max_reply_chars", "must be > 0")
    _check(name != "answer", key, "the tool named 'answer' ends a trajectory; an mcp entry offers its server's "
                                  "tools under their own names, not its own")


def validate(cfg: Config) -> Config:
    """Semantic checks a schema cannot express. Raises ConfigError naming the key."""
    r = cfg.rollout
    for key in ("max_turns", "max_tokens_per_turn", "max_total_tokens", "group_size", "num_workers",
                "max_calls_per_turn"):
        _check(getattr(r, key) > 0, f"rollout.{key}", f"must be > 0, got {getattr(r, key)}")
    _check(r.mode in ("async", "lockstep"), "rollout.mode", f"must be async or lockstep, got {r.mode!r}")
    _check(r.temperature >= 0, "rollout.temperature", f"must be >= 0, got {r.temperature}")
    _check(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _check(r.engine.device in ("cpu", "cuda"), "rollout.engine.device", f"must be cpu or cuda, got {r.engine.device!r}")
    _check(0 < r.engine.gpu_memory_utilization <= 1, "rollout.engine.gpu_memory_utilization", "must be in (0, 1]")
    _check(r.max_total_tokens <= r.engine.max_model_len, "rollout.max_total_tokens",
           f"{r.max_total_tokens} exceeds rollout.engine.max_model_len={r.engine.max_model_len}")

    m = cfg.model
    _check(m.pretrain_steps >= 0, "model.pretrain_steps", f"must be >= 0, got {m.pretrain_steps}")
    _check(m.pretrain_batch_size > 0, "model.pretrain_batch_size", f"must be > 0, got {m.pretrain_batch_size}")
    _check(m.pretrain_lr > 0, "model.pretrain_lr", f"must be > 0, got {m.pretrain_lr}")
    _check(0 <= m.pretrain_reading_share <= 1, "model.pretrain_reading_share",
           f"must be in [0, 1], got {m.pretrain_reading_share}")
    _check(not (m.pretrain_steps and not m.word_tokens), "model.word_tokens",
           "copy pretraining (model.pretrain_steps > 0) writes calls to these tool words: name at least one")

    tools = cfg.tools.tools
    _check(cfg.tools.num_executors > 0, "tools.num_executors", "must be > 0")
    enabled = {n for n, t in tools.items() if t.enabled}
    _check("answer" in enabled, "tools.tools", "an enabled tool named 'answer' is required (it ends a trajectory)")
    for name in r.constrained_tools:  # the names of the tools an mcp entry contributes are known once it runs
        _check(name in enabled and tools[name].kind != "mcp", "rollout.constrained_tools",
               f"no enabled tool named {name!r}; tools: {', '.join(sorted(enabled))}")
    for name, t in tools.items():
        key = f"tools.tools.{name}"
        _check(t.kind in TOOL_KINDS, f"{key}.kind", f"unknown kind {t.kind!r}; known: {', '.join(TOOL_KINDS)}")
        _check(t.max_concurrency > 0, f"{key}.max_concurrency", "must be > 0")
        _check(t.timeout_s > 0, f"{key}.timeout_s", "must be > 0")
        _check(t.max_retries >= 0, f"{key}.max_retries", "must be >= 0")
        _check(t.price_per_call >= 0, f"{key}.price_per_call", "must be >= 0")
        if t.kind == "llm":
            _check(bool(t.model), f"{key}.model", "an llm tool needs a model name")
            _check(t.max_reply_chars > 0, f"{key}.max_reply_chars", "must be > 0")
            _check(bool(t.base_url), f"{key}.base_url", "an llm tool needs a base_url ('experts' for the built-in ones)")
            for p in ("price_in_per_mtok", "price_out_per_mtok"):
                _check(getattr(t, p) is not None, f"{key}.{p}", f"price missing for model {t.model!r}")
                _check(getattr(t, p) >= 0, f"{key}.{p}", "must be >= 0")
            if t.base_url == "experts":
                _check(t.model in cfg.data.experts, f"{key}.model",
                       f"no simulated expert {t.model!r} in data.experts ({', '.join(cfg.data.experts) or 'none'})")
                _check(cfg.serve.enabled or not t.enabled, f"{key}.base_url",
                       "'experts' needs serve.enabled=true (Ray Serve hosts the simulated experts)")
        if t.kind == "search":
            _check(t.backend in ("bm25", "tavily"), f"{key}.backend", f"must be bm25 or tavily, got {t.backend!r}")
            _check(t.top_k > 0, f"{key}.top_k", "must be > 0")
            _check(t.backend != "tavily" or bool(t.api_key_env), f"{key}.api_key_env",
                   "the tavily backend needs an API key: set api_key_env to the name of an environment variable "
                   "that holds it")
        if t.kind == "mcp":
            _check_mcp(key, name, t)
        if t.kind == "python":
            for p in ("cpu_time_s", "memory_mb", "max_processes", "max_file_mb", "max_output_bytes"):
                _check(getattr(t, p) > 0, f"{key}.{p}", "must be > 0")
            _check(t.sandbox in SANDBOX_MODES, f"{key}.sandbox",
                   f"unknown mode {t.sandbox!r}; known: {', '.join(SANDBOX_MODES)}")
    _check(cfg.serve.num_replicas >= 1, "serve.num_replicas", "must be >= 1")
    _check(re.fullmatch(r"(/[A-Za-z0-9_-]+)+", cfg.serve.route) is not None, "serve.route",
           f"must be a path like /orchestrator (letters, digits, - and _; not / itself: the experts' route), "
           f"got {cfg.serve.route!r}")
    d = cfg.data
    for fam in d.families:
        _check(fam in TASK_FAMILIES, "data.families", f"unknown family {fam!r}; known: {', '.join(TASK_FAMILIES)}")
    for key in ("num_countries", "num_companies", "num_people"):
        _check(getattr(d, key) >= 2, f"data.{key}",
               f"must be >= 2 (multihop pairs two entities), got {getattr(d, key)}")
    _check(d.tasks_per_family >= 1, "data.tasks_per_family", f"must be >= 1, got {d.tasks_per_family}")
    _check(0 <= d.test_fraction < 1, "data.test_fraction", f"must be in [0, 1), got {d.test_fraction}")
    for name, e in d.experts.items():
        for fam, p in e.accuracy.items():
            _check(0 <= p <= 1, f"data.experts.{name}.accuracy.{fam}", f"must be in [0, 1], got {p}")
        _check(e.latency_mean_s >= 0, f"data.experts.{name}.latency_mean_s", "must be >= 0")
    rw = cfg.reward
    _check(rw.mode in ("group", "absolute"), "reward.mode", f"must be group or absolute, got {rw.mode!r}")
    # Any configured tool, enabled or not: a weight for a disabled tool is inert, and the tasks' own preferences
    # name configured tools too. Cost and latency have keys of their own (cost_weight, latency_weight).
    for name in rw.tool_weights:
        _check(name in tools, f"reward.tool_weights.{name}", f"no tool named {name!r}; tools: {', '.join(tools)}")
    if rw.judge_tool:
        _check(rw.judge_tool in enabled and tools[rw.judge_tool].kind == "llm", "reward.judge_tool",
               f"{rw.judge_tool!r} is not an enabled llm tool")
    a = cfg.algo
    _check(a.name in ("grpo", "ppo"), "algo.name", f"must be grpo or ppo, got {a.name!r}")
    _check(a.loss_agg in ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean"), "algo.loss_agg",
           f"unknown aggregation {a.loss_agg!r}")
    _check(a.kl_estimator in ("k1", "k2", "k3"), "algo.kl_estimator", f"must be k1, k2 or k3, got {a.kl_estimator!r}")
    for key in ("lr", "critic_lr", "micro_batch_tokens", "epochs"):
        _check(getattr(a, key) > 0, f"algo.{key}", f"must be > 0, got {getattr(a, key)}")
    _check(0 <= a.clip_low < 1 and a.clip_high >= 0, "algo.clip_low", "need 0 <= clip_low < 1 and clip_high >= 0")
    _check(a.dual_clip == 0 or a.dual_clip > 1, "algo.dual_clip", f"must be 0 (off) or > 1, got {a.dual_clip}")
    _check(0 <= a.gamma <= 1 and 0 <= a.lam <= 1, "algo.gamma", "gamma and lam must be in [0, 1]")
    le = cfg.learner
    _check(le.num_learners > 0, "learner.num_learners", "must be > 0")
    _check(le.num_cpus_per_learner > 0 or le.num_gpus_per_learner > 0, "learner.num_cpus_per_learner",
           "is 0, as is learner.num_gpus_per_learner: a learner needs some resource to be placed")
    _check(le.backend in ("gloo", "nccl"), "learner.backend", f"must be gloo or nccl, got {le.backend!r}")
    _check(le.dtype in ("float32", "bfloat16", "float16"), "learner.dtype", f"unknown dtype {le.dtype!r}")
    _check(le.weight_sync in ("file", "collective"), "learner.weight_sync",
           f"must be file or collective, got {le.weight_sync!r}")
    _check(le.weight_sync != "collective" or cfg.rollout.engine.tensor_parallel_size == 1, "learner.weight_sync",
           "collective joins one process per engine: needs rollout.engine.tensor_parallel_size=1 (or use file)")
    t = cfg.train
    _check(t.steps >= 0, "train.steps", "must be >= 0")
    _check(t.tasks_per_step > 0, "train.tasks_per_step", "must be > 0")
    _check(t.eval_every >= 0, "train.eval_every", "must be >= 0 (0: evaluate only before and after)")
    _check(t.eval_trials >= 0, "train.eval_trials", "must be >= 0 (0: rollout.group_size)")
    _check(t.mode in ("sync", "async"), "train.mode", f"must be sync or async, got {t.mode!r}")
    _check(t.max_staleness >= 0, "train.max_staleness", "must be >= 0 (0: on-policy, as train.mode=sync)")
    _check(t.wandb_mode in ("", "online", "offline", "disabled"), "train.wandb_mode",
           f"must be online, offline or disabled, got {t.wandb_mode!r}")
    _check(cfg.sft.num_demos > 0 and cfg.sft.epochs > 0 and cfg.sft.num_workers > 0, "sft",
           "num_demos, epochs and num_workers must be > 0")
    _check(cfg.sft.env_demo_repeats > 0, "sft.env_demo_repeats", "must be > 0")
    _check(cfg.sft.think or not cfg.sft.think_every_call, "sft.think_every_call", "needs sft.think=true")
    _check(cfg.sft.think or not cfg.sft.think_progress, "sft.think_progress", "needs sft.think=true")
    _check(cfg.sft.think_progress or not cfg.sft.think_count, "sft.think_count", "needs sft.think_progress=true")
    _check(cfg.sft.replay_drills >= 0, "sft.replay_drills", "must be >= 0 (0: demonstrations only)")
    _validate_env(cfg)
    for key in ("num_trajectories", "concurrency", "turns", "tokens_per_turn", "sandbox_runs", "sandbox_concurrency",
                "sync_repeats", "step_prompts", "step_max_tokens", "step_steps"):
        _check(getattr(cfg.bench, key) > 0, f"bench.{key}", "must be > 0")
    _check(bool(cfg.bench.sync_hidden_sizes) and all(
        h > 0 and h % cfg.model.head_dim == 0 for h in cfg.bench.sync_hidden_sizes), "bench.sync_hidden_sizes",
        f"must be a non-empty list of multiples of model.head_dim ({cfg.model.head_dim})")
    _check(cfg.eval.max_tasks >= 0, "eval.max_tasks", "must be >= 0")
    _check(cfg.eval.group_size > 0, "eval.group_size", "must be > 0")
    # the baselines eval/baselines.py knows: each callable tool alone, the dearest / cheapest model alone (none
    # without a model tool: the default train.baselines stays valid when every model is turned off)
    callable_tools = [n for n, t in cfg.tools.tools.items() if t.enabled and t.kind in ("python", "search", "llm")]
    baselines = ["random", "best", "only:*", "only:priciest", "only:cheapest", *(f"only:{n}" for n in callable_tools)]
    for key, names in (("eval.baselines", cfg.eval.baselines), ("train.baselines", cfg.train.baselines)):
        for b in names:
            _check(b in baselines, key, f"unknown baseline {b!r}; known: {', '.join(baselines)}")
    _check(not set(cfg.eval.compare) & set(cfg.eval.baselines), "eval.compare",
           "a policy and a baseline share a name")
    _validate_synth(cfg)
    return cfg


def _validate_synth(cfg: Config) -> None:
    s = cfg.synth
    for key in ("max_tokens", "max_attempts", "num_domains", "records_per_entity", "intents_per_domain",
                "tasks_per_intent"):
        _check(getattr(s, key) > 0, f"synth.{key}", f"must be > 0, got {getattr(s, key)}")
    _check(0 <= s.test_fraction < 1, "synth.test_fraction", f"must be in [0, 1), got {s.test_fraction}")
    _check(0 < s.near_duplicate <= 1, "synth.near_duplicate", f"must be in (0, 1], got {s.near_duplicate}")
    for p in ("price_in_per_mtok", "price_out_per_mtok"):
        _check(getattr(s.llm, p) >= 0, f"synth.llm.{p}", "must be >= 0")


def check_synth_endpoint(cfg: Config) -> None:
    """`data synthesize` needs a model: checked when it runs, as no other command does."""
    _check_endpoint(cfg.synth.llm, "synth.llm", "synthesis")


def _validate_env(cfg: Config) -> None:
    for name, e in cfg.env.items():
        key = f"env.{name}"
        _check(e.kind in ENV_KINDS, f"{key}.kind", f"unknown kind {e.kind!r}; known: {', '.join(ENV_KINDS)}")
        _check(e.max_tasks >= 0, f"{key}.max_tasks", "must be >= 0 (0: all)")
        _check(e.kind != "domain" or e.user.kind == "scripted", f"{key}.user.kind",
               f"a domain folder has the scripted user only, got {e.user.kind!r}")
        if e.kind == "benchmark":
            _validate_benchmark(e, key)
        if e.kind != "tau2":
            continue
        _check(e.domain in TAU2_DOMAINS, f"{key}.domain",
               f"unknown τ²-Bench domain {e.domain!r}; known: {', '.join(TAU2_DOMAINS)}")
        u = e.user
        _check(u.kind in USER_KINDS, f"{key}.user.kind", f"unknown kind {u.kind!r}; known: {', '.join(USER_KINDS)}")
        if u.kind == "llm":
            _check_endpoint(u, f"{key}.user", "an LLM user")
        _check(e.nl_assertions in NL_ASSERTION_MODES, f"{key}.nl_assertions",
               f"unknown mode {e.nl_assertions!r}; known: {', '.join(NL_ASSERTION_MODES)}")
        if e.judge.model or e.judge.base_url or e.nl_assertions == "all":
            _check_endpoint(e.judge, f"{key}.judge", "an NL-assertion judge")


def _validate_benchmark(e: EnvSourceConfig, key: str) -> None:
    _check(any(e.data_files.values()), f"{key}.data_files",
           "a benchmark needs its files, e.g. data_files.test=/path/to/hle.parquet")
    _check(e.layout in BENCHMARK_LAYOUTS, f"{key}.layout",
           f"unknown layout {e.layout!r}; known: {', '.join(BENCHMARK_LAYOUTS)}")
    if e.judge.model or e.judge.base_url:
        _check_endpoint(e.judge, f"{key}.judge", "an answer judge")


def _check_endpoint(e: EndpointConfig, key: str, what: str) -> None:
    _check(bool(e.model), f"{key}.model", f"{what} needs a model name")
    _check(e.base_url.startswith(("http://", "https://")), f"{key}.base_url",
           f"{what} needs an OpenAI-compatible endpoint URL, got {e.base_url!r}")
    _check(e.timeout_s > 0 and e.max_retries >= 0, key, "needs timeout_s > 0 and max_retries >= 0")
