import re
import subprocess
import sys

import pytest

from orchestra_rl.config import ConfigError, ToolConfig, ToolsConfig, describe_error, final_tool_names, load_config


def error_line(*overrides: str) -> str:
    with pytest.raises(Exception) as info:
        load_config(list(overrides))
    line = describe_error(info.value)
    assert line is not None and "\n" not in line
    return line


def test_default_config_is_valid():
    cfg = load_config()
    assert cfg.model.name == "tiny" and cfg.rollout.mode == "async"
    assert {"python", "search", "math_expert", "small_generalist", "large_generalist", "answer"} <= set(cfg.tools.tools)
    # The default world: the QA world and the built-in function-call domain, mixed.
    assert {n: s.kind for n, s in cfg.env.items()} == {"qa": "qa", "orders": "domain"}


def test_final_tools_are_the_enabled_answer_tools_and_final_answer_experts():
    # The agent loop ends a trajectory on a successful call of one of these, with its result as the answer.
    assert final_tool_names(load_config()) == {"answer", "math_expert", "small_generalist", "large_generalist"}
    cfg = load_config(["tools.tools.math_expert.final_answer=false", "tools.tools.large_generalist.enabled=false"])
    assert final_tool_names(cfg) == {"answer", "small_generalist"}


@pytest.mark.parametrize("override, expected", [
    ("rollout.max_turns=-1", "config error: rollout.max_turns: must be > 0, got -1"),
    ("rollout.max_turnz=3", "config error: rollout.max_turnz: Key 'max_turnz' not in 'RolloutConfig'"),
    ("rollout.max_turns=abc", "config error: rollout.max_turns: Value 'abc' of type 'str' could not be converted"),
    ("rollout.mode=sideways", "config error: rollout.mode: must be async or lockstep, got 'sideways'"),
    ("train.eval_every=-2", "config error: train.eval_every: must be >= 0"),
    ("tools.tools.large_generalist.price_in_per_mtok=null",
     "config error: tools.tools.large_generalist.price_in_per_mtok: price missing for model 'generalist-large'"),
    ("tools.tools.search.kind=telepathy", "config error: tools.tools.search.kind: unknown kind 'telepathy'"),
    ("rollout.constrained_tools=[serch]", "config error: rollout.constrained_tools: no enabled tool named 'serch'"),
    ("tools.tools.answer.enabled=false", "config error: tools.tools: an enabled tool named 'answer' is required"),
    ("tools.tools.math_expert.model=nobody", "config error: tools.tools.math_expert.model: no simulated expert 'nobody'"),
    ("data.experts.math-small.accuracy.arithmetic=1.5",
     "config error: data.experts.math-small.accuracy.arithmetic: must be in [0, 1], got 1.5"),
    ("model.pretrain_steps=-1", "config error: model.pretrain_steps: must be >= 0, got -1"),
    ("model.pretrain_lr=0", "config error: model.pretrain_lr: must be > 0, got 0.0"),
    ("model.word_tokens=[]", "config error: model.word_tokens: copy pretraining (model.pretrain_steps > 0) writes"),
    ("rollout.max_total_tokens=99999", "config error: rollout.max_total_tokens: 99999 exceeds rollout.engine.max_model_len"),
    ("model=nope", "config error: In 'config': Could not find 'model/nope'"),
    ("+reward.tool_weights.serch=1.0",
     "config error: reward.tool_weights.serch: no tool named 'serch'; tools: python, search,"),
    ("+reward.tool_weights.cost=1.0", "config error: reward.tool_weights.cost: no tool named 'cost'"),
    ("train.eval_trials=-1", "config error: train.eval_trials: must be >= 0 (0: rollout.group_size)"),
    ("sft.think_every_call=true", "config error: sft.think_every_call: needs sft.think=true"),
    ("sft.think_progress=true", "config error: sft.think_progress: needs sft.think=true"),
    ("sft.think=true sft.think_count=true", "config error: sft.think_count: needs sft.think_progress=true"),
    ("sft.replay_drills=-1", "config error: sft.replay_drills: must be >= 0 (0: demonstrations only)"),
    ("reward.mode=relative", "config error: reward.mode: must be group or absolute, got 'relative'"),
    ("reward.judge_tool=jduge", "config error: reward.judge_tool: 'jduge' is not an enabled llm tool"),
    ("reward.judge_tool=search", "config error: reward.judge_tool: 'search' is not an enabled llm tool"),
    ("reward.judge_tool=large_generalist tools.tools.large_generalist.enabled=false",
     "config error: reward.judge_tool: 'large_generalist' is not an enabled llm tool"),
    ("tools.tools.search.backend=google",
     "config error: tools.tools.search.backend: must be bm25 or tavily, got 'google'"),
    ("tools.tools.search.backend=tavily",
     "config error: tools.tools.search.api_key_env: the tavily backend needs an API key: set api_key_env"),
    ("serve.enabled=false", "config error: tools.tools.math_expert.base_url: 'experts' needs serve.enabled=true"),
    ("data.families=[arithmetic,poetry]",
     "config error: data.families: unknown family 'poetry'; known: arithmetic, lookup, multihop, hard"),
    ("data.num_people=1", "config error: data.num_people: must be >= 2 (multihop pairs two entities), got 1"),
    ("data.tasks_per_family=0", "config error: data.tasks_per_family: must be >= 1, got 0"),
    ("data.test_fraction=1.0", "config error: data.test_fraction: must be in [0, 1), got 1.0"),
    ("algo.name=dpo", "config error: algo.name: must be grpo or ppo, got 'dpo'"),
    ("algo.kl_estimator=k9", "config error: algo.kl_estimator: must be k1, k2 or k3"),
    ("learner.num_learners=0", "config error: learner.num_learners: must be > 0"),
    ("learner.num_cpus_per_learner=0 learner.num_gpus_per_learner=0",
     "config error: learner.num_cpus_per_learner: is 0, as is learner.num_gpus_per_learner"),
    ("learner.weight_sync=pigeon", "config error: learner.weight_sync: must be file or collective, got 'pigeon'"),
    ("tools.tools.python.sandbox=docker",
     "config error: tools.tools.python.sandbox: unknown mode 'docker'; known: auto, cgroup1, userns"),
    ("bench.sandbox_runs=0", "config error: bench.sandbox_runs: must be > 0"),
    ("bench.sync_hidden_sizes=[128,100]",
     "config error: bench.sync_hidden_sizes: must be a non-empty list of multiples of model.head_dim (32)"),
    ("serve.num_replicas=0", "config error: serve.num_replicas: must be >= 1"),
    ("serve.route=/", "config error: serve.route: must be a path like /orchestrator"),
    ("serve.route=orchestrator", "config error: serve.route: must be a path like /orchestrator"),
    ("eval.baselines=[always_large]", "config error: eval.baselines: unknown baseline 'always_large'; known: random, best, only:*, only:priciest, only:cheapest, only:python"),
    ("eval.baselines=[only:answer]", "config error: eval.baselines: unknown baseline 'only:answer'"),
    ("train.mode=overlap", "config error: train.mode: must be sync or async, got 'overlap'"),
    ("train.max_staleness=-1", "config error: train.max_staleness: must be >= 0 (0: on-policy, as train.mode=sync)"),
    ("learner.weight_sync=collective rollout.engine.tensor_parallel_size=2",
     "config error: learner.weight_sync: collective joins one process per engine"),
])
def test_bad_config_is_one_line_naming_the_key(override, expected):
    assert error_line(*override.split()).startswith(expected)


def test_tool_weights_may_name_a_disabled_tool():
    # A weight for a tool the run does not offer is inert; the tasks' own preferences name configured tools too.
    cfg = load_config(["tools.tools.large_generalist.enabled=false", "+reward.tool_weights.large_generalist=-1.0"])
    assert cfg.reward.tool_weights == {"large_generalist": -1.0}


def test_config_error_carries_key_and_problem():
    err = ConfigError("a.b", "must be > 0")
    assert (err.key, err.problem, str(err)) == ("a.b", "must be > 0", "a.b: must be > 0")


def test_cli_prints_one_line_and_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "orchestra_rl.cli", "eval", "rollout.max_turns=-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "config error: rollout.max_turns: must be > 0, got -1"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_multirun_composes_one_job_per_swept_value_each_in_its_own_folder(tmp_path):
    # `-m reward.cost_weight=0,1,3` as the README's sweep runs it; `config` prints each job's composed config.
    proc = subprocess.run([sys.executable, "-m", "orchestra_rl.cli", "config", "-m", "+experiment=routing",
                           "reward.cost_weight=0,3", f"hydra.sweep.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = [float(w) for w in re.findall(r"^  cost_weight: (\S+)$", proc.stdout, re.MULTILINE)]
    assert weights == [0.0, 3.0]
    # Each job writes into its own folder, where `orchestra-rl report <sweep folder>` finds its train_report.json.
    outputs = re.findall(r"^  output_dir: (\S+)$", proc.stdout, re.MULTILINE)
    for job in ("0", "1"):
        assert f"{tmp_path}/{job}/train" in outputs and (tmp_path / job / ".hydra" / "overrides.yaml").exists()


def test_the_gpu_set_up_is_config_groups_alone():
    cfg = load_config(["model=qwen3_8b", "rollout=gpu", "learner=gpu", "cluster=gpu_node"])
    assert (cfg.learner.backend, cfg.learner.dtype, cfg.learner.attn_implementation) == \
        ("nccl", "bfloat16", "flash_attention_2")
    assert cfg.learner.num_gpus_per_learner == cfg.rollout.num_gpus_per_worker == 1
    # 4 engines + 4 learners on the 8 GPUs of the node; weights broadcast over NCCL, no shared file needed.
    assert cfg.learner.num_learners + cfg.rollout.num_workers == cfg.cluster.num_gpus == 8
    assert cfg.learner.weight_sync == "collective" and cfg.rollout.engine.device == "cuda"


def test_the_routing_experiment_is_one_override_on_top_of_the_default():
    # The documented configuration that routes every QA family (README, docs/benchmarks.md): the QA world alone,
    # the names-first thought, 150 asynchronous steps of 16; any key still overridable after it.
    cfg = load_config(["+experiment=routing"])
    assert list(cfg.env) == ["qa"] and cfg.sft.think
    assert (cfg.train.mode, cfg.train.steps, cfg.train.tasks_per_step) == ("async", 150, 16)
    assert load_config(["+experiment=routing", "train.steps=60", "seed=1"]).train.steps == 60
    default = load_config()
    assert list(default.env) == ["qa", "orders"] and not default.sft.think and default.train.steps == 20


def test_a_kinds_settings_are_the_enabled_tools_else_a_disabled_ones():
    """Where a tool's limits apply though it may not be offered (the sandbox of model-written tools, `orchestra-rl
    sandbox`, `bench sandbox`): the enabled tool of the kind first, whatever its name."""
    tools = ToolsConfig(tools={"py_off": ToolConfig(kind="python", enabled=False, timeout_s=3.0),
                               "py": ToolConfig(kind="python", timeout_s=7.0), "search": ToolConfig(kind="search")})
    assert tools.settings_of_kind("python").timeout_s == 7.0
    tools.tools["py"].enabled = False
    assert tools.settings_of_kind("python").timeout_s == 3.0  # none enabled: the first configured
    assert tools.settings_of_kind("llm") is None
