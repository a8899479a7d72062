"""The unseen-tools setting (conf/tools/unseen.yaml): every tool renamed, described in other words and priced
differently, one expert new. Checked through the real executor, experts and agent loop: the policy is shown the new
tool list only, and the baselines route by tool kind, so they run unchanged and pay the new prices."""

import pytest

from orchestra_rl.config import load_config
from orchestra_rl.eval.baselines import run_baseline
from orchestra_rl.eval.run import select_tasks
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.system import System
from orchestra_rl.tools.registry import config_schemas
from tests.helpers import free_port

pytestmark = pytest.mark.integration


def test_unseen_tools_differ_from_trainings_in_every_name_description_and_price():
    seen, unseen = load_config().tools.tools, load_config(["tools=unseen"]).tools.tools
    assert set(seen) & set(unseen) == {"answer"}
    assert {t.description for t in seen.values()}.isdisjoint(t.description for t in unseen.values())
    price = {(t.kind, t.model): (t.price_per_call, t.price_in_per_mtok, t.price_out_per_mtok) for t in seen.values()}
    for t in unseen.values():
        if t.kind != "answer" and (t.kind, t.model) in price:
            assert (t.price_per_call, t.price_in_per_mtok, t.price_out_per_mtok) != price[(t.kind, t.model)]
    new_models = {t.model for t in unseen.values() if t.kind == "llm"} - {t.model for t in seen.values()}
    assert new_models == {"generalist-medium"}


def test_unseen_tools_are_what_the_policy_is_shown_and_what_the_baselines_call(make_config, ray_local):
    cfg = make_config("env=qa", "tools=unseen", "serve.latency_scale=0", f"serve.port={free_port()}",
                      "rollout.max_turns=4")
    with System(cfg, rollout=False) as system:
        names = [s["function"]["name"] for s in system.tool_schemas]
        assert names == list(cfg.tools.tools)
        assert config_schemas(cfg.tools) == system.tool_schemas  # known from the config alone, as the tools show them
        chat = ChatFormat(system.tokenizer, cfg.rollout.system_prompt, system.tool_schemas)
        prompt = system.tokenizer.decode(chat.prompt_ids("What is 2 + 3?"))
        assert all(name in prompt for name in names)
        assert cfg.tools.tools["reasoning_model"].description in prompt
        assert not any(old in prompt for old in ("math_expert", "large_generalist", '"python"', '"search"'))

        tasks = select_tasks(system, "test", 4, cfg.data.families)
        best = {t.family: t for t in run_baseline(cfg, system, tasks, "best", 1)}
        calls = {f: [c.name for c in t.tool_calls] for f, t in best.items()}
        assert calls == {"arithmetic": ["run_code", "answer"], "lookup": ["lookup_docs", "answer"],
                         "multihop": ["lookup_docs", "lookup_docs", "run_code", "answer"], "hard": ["frontier_model"]}
        assert best["arithmetic"].cost_usd == pytest.approx(0.00002)  # run_code's new price (was 0.00001)
        assert best["lookup"].cost_usd == pytest.approx(0.000005)
        assert all(best[f].final_answer == t.answer for f, t in zip(best, tasks) if f != "hard")

        # The new expert answers (generalist-medium: ~80 output tokens, ±25 %) at its own prices.
        for t in run_baseline(cfg, system, tasks, "only:reasoning_model", 1):
            (call,) = t.tool_calls
            assert call.name == "reasoning_model" and call.result.error is None
            assert 60 <= call.result.tokens_out <= 100
            assert call.result.cost_usd == pytest.approx(
                (call.result.tokens_in * 0.5 + call.result.tokens_out * 2.0) / 1e6)
