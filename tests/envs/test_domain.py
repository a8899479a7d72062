"""Function-call domains from a folder, and the built-in `orders` domain, through our agent loop: golden replays
score 1.0 on every task, doing nothing fails whatever asks for a change or an answer, breaking the policy is
graded 0, rollouts of a group have their own database, and a bad folder is one line naming the file and field."""

import asyncio
import json
import shutil
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from orchestra_rl.config import ConfigError, RolloutConfig, load_config
from orchestra_rl.data.orders import generate, write_domain
from orchestra_rl.envs.domain_files import Domain, DomainError
from orchestra_rl.envs.sources import golden_turns, load_tasks, make_environment
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import ScriptedEngine
from orchestra_rl.tools.base import Pricing
from orchestra_rl.types import ToolCall

GOODBYE = "Goodbye. ###STOP###"


@pytest.fixture(scope="module")
def setup(tiny_model_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("domains")
    cfg = load_config(["env=orders", f"data.cache_dir={cache}"])

    async def configured_tool(name, arguments, task):
        raise AssertionError(f"no configured tool is called here, got {name}")

    tasks = load_tasks(cfg, cache, "train") + load_tasks(cfg, cache, "test")
    return cfg, AutoTokenizer.from_pretrained(tiny_model_path), make_environment(cfg, configured_tool, []), tasks


def run(setup, task, turns, group_index=0):
    cfg, tokenizer, env, _ = setup
    loop = AgentLoop(ScriptedEngine(tokenizer, turns), env, ChatFormat(tokenizer, "", []),
                     RolloutConfig(max_turns=8, max_tokens_per_turn=10**6, max_total_tokens=10**7), Pricing(0, 0))
    return loop.run(task, group_index)


def kind(task) -> str:
    return task.metadata["domain_task"].split("_")[0]


async def test_golden_replays_score_one_and_doing_nothing_fails_what_asks_for_something(setup):
    cfg, _, _, tasks = setup
    assert len(tasks) == 48 and {kind(t) for t in tasks} == {"status", "cancel", "refuse"}
    golden = await asyncio.gather(*(run(setup, t, golden_turns(cfg, t)) for t in tasks))
    assert all(tr.error is None and tr.env_outcome == 1.0 and tr.stop_reason == "done" for tr in golden)
    goodbye = await asyncio.gather(*(run(setup, t, [GOODBYE]) for t in tasks))
    for task, tr in zip(tasks, goodbye):
        # A refusal is right by doing nothing; a cancellation needs the write, a status question the answer.
        assert tr.env_outcome == (1.0 if kind(task) == "refuse" else 0.0), task.task_id
        assert tr.env_info["termination"] == "agent_stop"


async def test_breaking_the_policy_or_the_tools_is_graded_and_shown(setup):
    cfg, _, _, tasks = setup
    refuse = next(t for t in tasks if kind(t) == "refuse")
    order_id = refuse.metadata["domain_task"].split("_")[1]
    cancel = ToolCall("set_order_status", {"order_id": order_id, "value": "cancelled"}).render()
    tr = await run(setup, refuse, [cancel, GOODBYE])
    assert tr.tool_calls[0].result.error is None and tr.env_outcome == 0.0  # cancelled a shipped order
    bad = [ToolCall("get_order", {"order_id": "ORD-999"}).render(),
           ToolCall("set_order_status", {"order_id": order_id, "value": "lost"}).render(),
           ToolCall("get_order", {"id": order_id}).render(), ToolCall("drop_orders", {}).render(), GOODBYE]
    tr = await run(setup, refuse, bad)
    assert [c.result.error for c in tr.tool_calls] == [
        "no order with order_id 'ORD-999'", "status must be one of pending, shipped, delivered, cancelled",
        "get_order takes exactly order_id", "unknown tool 'drop_orders'"]
    assert tr.env_outcome == 1.0  # nothing changed


async def test_the_user_answers_then_ends_and_each_rollout_has_its_own_database(setup):
    cfg, _, _, tasks = setup
    cancel = next(t for t in tasks if kind(t) == "cancel")
    tr = await run(setup, cancel, ["Let me check.", "Anything else?", "Hello?"])
    assert tr.env_info["termination"] == "user_stop" and len(tr.turns) == 2 and tr.env_outcome == 0.0
    group = await asyncio.gather(*(run(setup, cancel, golden_turns(cfg, cancel) if g == 0 else [GOODBYE], g)
                                   for g in range(3)))
    assert [tr.env_outcome for tr in group] == [1.0, 0.0, 0.0]
    assert group[0].env_info["db_hash"] != group[1].env_info["db_hash"] == group[2].env_info["db_hash"]


def test_the_prompt_holds_the_policy_and_the_domain_tools(setup):
    _, _, env, _ = setup
    orders = env.environments["orders"]
    assert "Only a pending order can be cancelled" in orders.system_prompt
    assert [s["function"]["name"] for s in orders.tool_schemas] == [
        "get_customer", "find_customers_by_name", "get_order", "find_orders_by_customer_id", "set_order_status"]


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "orders"
    write_domain(generate(), path)
    return path


def edit(path, name, change):
    data = json.loads((path / name).read_text())
    change(data)
    (path / name).write_text(json.dumps(data))


@pytest.mark.parametrize("name, change, message", [
    ("tasks.json", lambda d: d[3]["actions"][0].update(name="nope"),
     "tasks.json: [3].actions[0].name: unknown tool 'nope'"),
    ("tasks.json", lambda d: d[1]["actions"][0].update(arguments={"id": "ORD-1"}),
     "tasks.json: [1].actions[0].arguments: "),
    ("tasks.json", lambda d: d[0].pop("user"), "tasks.json: [0].user: Field required"),
    ("tasks.json", lambda d: d[2].update(reward_basis=["DB", "VIBES"]), "tasks.json: [2].reward_basis[1]: "),
    ("db.json", lambda d: d["order"]["ORD-2"].update(status="lost"),
     "db.json: order.ORD-2.status: 'lost' is not one of pending, shipped, delivered, cancelled"),
    ("db.json", lambda d: d.pop("customer"), "db.json: customer: missing"),
    ("domain.json", lambda d: d["entities"]["order"].update(find_by=["colour"]),
     "domain.json: entities.order.find_by: no field 'colour'"),
    ("domain.json", lambda d: d["entities"]["order"].update(size=3), "domain.json: entities.order.size: Extra"),
])
def test_a_bad_domain_folder_is_one_line_naming_the_file_and_field(folder, name, change, message):
    edit(folder, name, change)
    with pytest.raises(DomainError) as e:
        Domain(folder)
    assert message in str(e.value) and str(folder / name) in str(e.value) and "\n" not in str(e.value)


def test_missing_or_broken_files_and_the_cli_stops_before_any_actor(folder):
    (folder / "db.json").write_text("{not json")
    with pytest.raises(DomainError, match="db.json: not JSON"):
        Domain(folder)
    shutil.rmtree(folder)
    with pytest.raises(DomainError, match="no such domain folder"):
        Domain(folder)
    proc = subprocess.run([sys.executable, "-m", "orchestra_rl.cli", "eval", "env=orders",
                           f"env.orders.path={folder}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"environment error: {folder}: no such domain folder"
    with pytest.raises(ConfigError, match="env.orders.user.kind: a domain folder has the scripted user only"):
        load_config(["env=orders", "env.orders.user.kind=solo"])
