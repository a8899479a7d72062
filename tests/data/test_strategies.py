import io

import pytest
from rich.console import Console

from orchestra_rl.config import load_config
from orchestra_rl.data.strategies import EXPERT_PROMPT_TOKENS, best_strategy, expected_outcomes, print_strategy_table

COST_WEIGHTS = [0.0, 1.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 1e5, 1e6]


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def test_every_family_has_its_local_strategy_and_every_expert(cfg):
    rows = expected_outcomes(cfg)
    for family, local in [("arithmetic", ("python",)), ("lookup", ("search",)),
                          ("multihop", ("search", "search", "python"))]:
        tools = {r.tools: r for r in rows if r.family == family}
        assert set(tools) == {local, ("math_expert",), ("small_generalist",), ("large_generalist",)}
        assert tools[local].accuracy == 1.0
    hard = {r.tools: r for r in rows if r.family == "hard"}
    assert hard[("search",)].accuracy == 0.0 and hard[("large_generalist",)].accuracy == 0.9


def test_costs_and_latencies_come_from_the_config(cfg):
    rows = {(r.family, r.tools): r for r in expected_outcomes(cfg)}
    large = rows[("hard", ("large_generalist",))]
    # the prompt estimate at $1.25/M + 120 output tokens at $10/M
    assert large.cost_usd == pytest.approx((EXPERT_PROMPT_TOKENS * 1.25 + 120 * 10.0) / 1e6)
    assert large.latency_s == 2.0
    assert rows[("multihop", ("search", "search", "python"))].cost_usd == pytest.approx(3e-5)  # 3 calls at $1e-5


def test_best_strategies(cfg):
    assert best_strategy(cfg, "hard", cost_weight=0.0).tools == ("large_generalist",)
    assert best_strategy(cfg, "lookup", cost_weight=0.0).tools == ("search",)
    assert best_strategy(cfg, "multihop", cost_weight=0.0).tools == ("search", "search", "python")
    for weight in COST_WEIGHTS[1:]:
        assert best_strategy(cfg, "arithmetic", cost_weight=weight).tools == ("python",)
    # Cost-sensitive enough, the large generalist no longer pays for itself on hard tasks.
    assert best_strategy(cfg, "hard", cost_weight=1e4).tools != ("large_generalist",)


def test_best_strategy_follows_the_config():
    cfg = load_config(["data.experts.generalist-large.accuracy.arithmetic=1.0",
                       "tools.tools.python.price_per_call=0.01"])  # python now dearer than the large generalist
    assert best_strategy(cfg, "arithmetic", cost_weight=0.0).tools == ("large_generalist",)  # tie: cheaper wins
    assert best_strategy(cfg, "arithmetic", cost_weight=1.0).tools == ("large_generalist",)
    cfg = load_config(["tools.tools.python.enabled=false"])
    assert ("python",) not in {r.tools for r in expected_outcomes(cfg)}
    assert best_strategy(cfg, "arithmetic", cost_weight=0.0).tools == ("large_generalist",)


@pytest.mark.parametrize("family", ["arithmetic", "lookup", "multihop", "hard"])
@pytest.mark.parametrize("latency_weight", [0.0, 0.1])
def test_more_cost_weight_never_buys_a_dearer_strategy(cfg, family, latency_weight):
    costs = [best_strategy(cfg, family, w, latency_weight).cost_usd for w in COST_WEIGHTS]
    assert costs == sorted(costs, reverse=True)


def test_latency_weight_prefers_faster_experts(cfg):
    # large: 0.9 - 0.5 * 2.0 < small: 0.25 - 0.5 * 0.4
    assert best_strategy(cfg, "hard", cost_weight=0.0, latency_weight=0.5).tools == ("small_generalist",)


def test_unknown_family(cfg):
    with pytest.raises(ValueError, match="no strategy for family 'poetry'"):
        best_strategy(cfg, "poetry", 0.0)


def test_table(cfg):
    out = io.StringIO()
    print_strategy_table(cfg, cost_weight=1e4, console=Console(file=out, width=120))
    text = out.getvalue()
    assert "R = o - 10000*C - 0*L" in text and "E[o]" in text
    hard = [line for line in text.splitlines() if "hard" in line]
    assert len(hard) == 4
    assert [line for line in hard if line.rstrip(" │").endswith("*")] == [l for l in hard if "small_generalist" in l]
