"""A policy constrained to well-formed tool calls (vLLM structured outputs) drives every tool kind end to end.

Its own module: the simulated experts are one Ray Serve application per cluster, so each System owns it alone.
"""

import pytest

from orchestra_rl.data.world import load_tasks
from orchestra_rl.system import System
from tests.helpers import free_port


@pytest.mark.integration
def test_constrained_policy_calls_tools_and_answers(make_config, ray_local):
    cfg = make_config("tools.tools.python.enabled=false", "rollout.max_turns=4", "rollout.max_tokens_per_turn=96",
                      "rollout.constrained_tools=[search,math_expert,answer]", f"serve.port={free_port()}",
                      "serve.latency_scale=0.01",
                      # Not final here: trajectories go on after the expert, so each makes several random choices
                      # among the three tools (with final_answer most ended on a first math_expert call, and 8 of them
                      # sometimes never chose search).
                      "tools.tools.math_expert.final_answer=false")
    with System(cfg) as rt:
        tasks = load_tasks(rt.world_dir, "test")[:8]
        trajectories = rt.rollout.rollout(tasks, group_size=2)
    assert len(trajectories) == 16
    names = set()
    for tr in trajectories:
        assert all(t.parse_error is None and len(t.calls) == 1 for t in tr.turns)
        names |= {c.name for c in tr.tool_calls}
        last = tr.tool_calls[-1]
        # Only the answer tool ends the trajectory here, with its argument as the answer.
        assert (tr.stop_reason == "answer") == (last.name == "answer" and last.result.error is None)
        if tr.stop_reason == "answer":
            assert tr.final_answer == last.result.text == last.arguments["answer"]
        # Cost is complete: every priced call plus the orchestrator's own tokens.
        assert tr.cost_usd == pytest.approx(sum(c.result.cost_usd for c in tr.tool_calls) + tr.policy_cost_usd)
        for c in tr.tool_calls:
            if c.name == "math_expert":
                assert c.result.tokens_in > 0 and c.result.cost_usd > 0 and c.result.latency_s > 0
    assert names == {"search", "math_expert", "answer"}
