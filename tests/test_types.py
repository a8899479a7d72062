import pytest

from orchestra_rl.tools.base import Pricing
from orchestra_rl.types import UNKNOWN_TOOL, ToolCallRecord, ToolResult, Trajectory, Turn


def record(turn: int, name: str, cost: float, latency: float, error: str | None = None) -> ToolCallRecord:
    return ToolCallRecord(turn=turn, name=name, arguments={},
                          result=ToolResult(text="r", cost_usd=cost, latency_s=latency, error=error))


def test_pricing_per_million_tokens_plus_per_call():
    p = Pricing(input_per_mtok=1.25, output_per_mtok=10.0, per_call=0.001)
    assert p.cost(2000, 300) == pytest.approx(2000 * 1.25e-6 + 300 * 10e-6 + 0.001, abs=1e-15)
    assert Pricing().cost(10**6, 10**6) == 0.0


def test_trajectory_cost_latency_and_tool_counts():
    turns = [
        Turn(text="a", num_tokens=3, finish_reason="tool_call",
             calls=[record(0, "search", 0.001, 0.2), record(0, "large_generalist", 0.01, 2.0)]),
        Turn(text="b", num_tokens=2, finish_reason="tool_call", calls=[record(1, "python", 0.0, 0.5, "exit code 1")]),
    ]
    t = Trajectory(task_id="t", family="lookup", group_index=0, token_ids=[1, 2, 3, 4, 5, 6, 7],
                   logprobs=[0, 0, -1, -1, -1, -2, -2], loss_mask=[0, 0, 1, 1, 1, 1, 1], prompt_length=2,
                   turns=turns, final_answer=None, stop_reason="max_turns", policy_cost_usd=0.0005)
    assert t.cost_usd == pytest.approx(0.001 + 0.01 + 0.0005)
    # Calls of one turn run concurrently: the turn costs its slowest call.
    assert t.latency_s == pytest.approx(2.0 + 0.5)
    assert t.tool_counts() == {"search": 1, "large_generalist": 1, "python": 1}
    # A name the policy made up is counted under one key when the configured names are given.
    assert t.tool_counts(known=["search", "python"]) == {"search": 1, UNKNOWN_TOOL: 1, "python": 1}
    assert t.num_policy_tokens == 5
