"""The reward mix of docs/rewards.md: hand-computed values, and the properties that page says the tests pin."""

from __future__ import annotations

import math
import random

import pytest

from orchestra_rl.config import RewardConfig
from orchestra_rl.reward.mix import (
    MIN_CORRECT_MULTIPLIER,
    absolute_rewards,
    group_rewards,
    mix_group,
    normalised,
    preference_weights,
    trajectory_cost,
)

TOOLS = ["python", "search", "large_generalist", "answer"]


def rewards(outcomes, costs, latencies, counts, **weights) -> list[float]:
    w = {"cost": 0.0, "latency": 0.0, **dict.fromkeys(TOOLS, 0.0), **weights}
    return [row["reward"] for row in group_rewards(outcomes, costs, latencies, counts, w)]


def test_hand_computed_group_of_three(trajectory, task):
    # C = [.01, .03, .02] -> ĉ = [1, 0, .5];  L = [2, 1, 4] -> l̂ = [2/3, 1, 0]
    # search calls [2, 0, 1] -> [1, 0, .5];  large_generalist calls [0, 1, 2] -> [0, .5, 1]
    # m = 1 + 1·ĉ + .5·l̂ + .5·n̂_search − 1·n̂_large = [2.8333, 1.0, .75];  R = o·m with o = [1, 1, 0]
    group = [
        trajectory(answer="1", calls=[("search", .004, 1.0), ("search", .004, 1.0), ("answer", 0, 0)],
                   policy_cost=.002),
        trajectory(answer="1.0", calls=[("large_generalist", .03, 1.0), ("answer", 0, 0)]),
        trajectory(answer="2", calls=[("search", .005, 1.0), ("large_generalist", .005, 1.5),
                                      ("large_generalist", .005, 1.5), ("answer", 0, 0)], policy_cost=.005),
    ]
    cfg = RewardConfig(cost_weight=1.0, latency_weight=0.5, tool_weights={"search": 0.5, "large_generalist": -1.0})

    scored = mix_group(group, [1.0, 1.0, 0.0], task(), cfg, TOOLS)

    assert [t.reward for t in scored] == pytest.approx([1 + 1 + 1 / 3 + .5, 1.0, 0.0])
    c = [t.reward_components for t in scored]
    assert [x["cost_usd"] for x in c] == pytest.approx([.01, .03, .02])
    assert [x["latency_s"] for x in c] == pytest.approx([2.0, 1.0, 4.0])
    assert [x["cost_term"] for x in c] == pytest.approx([1.0, 0.0, 0.5])
    assert [x["latency_term"] for x in c] == pytest.approx([2 / 3, 1.0, 0.0])
    assert [x["tool_search"] for x in c] == pytest.approx([1.0, 0.0, 0.5])
    assert [x["tool_large_generalist"] for x in c] == pytest.approx([0.0, 0.5, 1.0])
    assert [x["tool_answer"] for x in c] == [0.0, 0.0, 0.0]  # everyone answered once: the term drops out
    assert [x["calls_large_generalist"] for x in c] == [0.0, 1.0, 2.0]
    assert [x["multiplier"] for x in c] == pytest.approx([1 + 1 + 1 / 3 + .5, 1.0, .75])
    assert [x["outcome"] for x in c] == [1.0, 1.0, 0.0]
    assert c[0]["pref_cost"] == 1.0 and c[0]["pref_large_generalist"] == -1.0 and c[0]["pref_python"] == 0.0
    assert all(x["reward"] == t.reward for x, t in zip(c, scored))


def test_mix_group_returns_new_trajectories_and_keeps_earlier_components(trajectory, task):
    original = trajectory()
    original.reward_components["judge_cost_usd"] = 0.5

    (scored,) = mix_group([original], [1.0], task(), RewardConfig(), TOOLS)

    assert original.reward is None and "reward" not in original.reward_components
    assert scored.reward == 1.0
    assert scored.reward_components["judge_cost_usd"] == 0.5
    assert scored.reward_components["cost_usd"] == 0.5  # the judge's cost is part of the trajectory's cost


def test_judge_cost_counts_as_cost(trajectory, task):
    a, b = trajectory(policy_cost=.01), trajectory(policy_cost=.01)
    b.reward_components["judge_cost_usd"] = .01

    scored = mix_group([a, b], [1.0, 1.0], task(), RewardConfig(cost_weight=1.0), TOOLS)

    assert trajectory_cost(b) == pytest.approx(.02)
    assert [t.reward for t in scored] == [2.0, 1.0]


def test_all_weights_zero_is_pure_outcome():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 6)
        outcomes = [rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]
        counts = [{"search": rng.randint(0, 3)} for _ in range(n)]
        assert rewards(outcomes, [rng.random() for _ in range(n)], [rng.random() for _ in range(n)],
                       counts) == outcomes


@pytest.mark.parametrize("n", [1, 4])
def test_degenerate_groups_are_finite_and_pure_outcome(n):
    # All members equal (or a single member): every max equals its min, every term drops out.
    r = rewards([1.0] * n, [0.02] * n, [3.0] * n, [{"search": 2}] * n,
                cost=1.0, latency=1.0, search=-2.0, python=1.0)
    assert r == [1.0] * n


def test_float_noise_in_equal_costs_does_not_decide():
    assert normalised([0.1 + 0.2, 0.3], lower_is_better=True) == [0.0, 0.0]
    assert normalised([1.0, 2.0, 3.0], lower_is_better=True) == [1.0, 0.5, 0.0]
    assert normalised([1.0, 2.0, 3.0], lower_is_better=False) == [0.0, 0.5, 1.0]


def random_group(rng: random.Random) -> tuple[list, list, list, list, dict]:
    n = rng.randint(1, 8)
    outcomes = [rng.choice([0.0, 1.0]) for _ in range(n)]
    costs = [rng.choice([0.0, rng.uniform(0, 0.05)]) for _ in range(n)]
    latencies = [rng.uniform(0, 10) for _ in range(n)]
    counts = [{t: rng.randint(0, 3) for t in TOOLS} for _ in range(n)]
    weights = {t: rng.uniform(-3, 3) for t in TOOLS}
    return outcomes, costs, latencies, counts, weights


def test_a_wrong_answer_never_outscores_a_right_one():
    rng = random.Random(1)
    floored = 0
    for _ in range(2000):
        outcomes, costs, latencies, counts, weights = random_group(rng)
        # Negative cost/latency weights too: the guarantee must not depend on the user's signs.
        r = rewards(outcomes, costs, latencies, counts, cost=rng.uniform(-3, 3), latency=rng.uniform(-3, 3),
                    **weights)
        right = [x for x, o in zip(r, outcomes) if o == 1.0]
        wrong = [x for x, o in zip(r, outcomes) if o == 0.0]
        assert all(math.isfinite(x) for x in r)
        assert wrong == [0.0] * len(wrong)
        assert all(x >= MIN_CORRECT_MULTIPLIER for x in right)
        floored += sum(x == MIN_CORRECT_MULTIPLIER for x in right)
    assert floored > 0  # the random weights did drive some multipliers to the floor


def test_floor_hand_computed():
    # Two correct: the one that used the avoided tool has m = 1 − 2·1 = −1 -> floored; the wrong one scores 0.
    r = rewards([1.0, 1.0, 0.0], [0.0] * 3, [0.0] * 3,
                [{"large_generalist": 1}, {}, {"large_generalist": 1}], large_generalist=-2.0)
    assert r == [MIN_CORRECT_MULTIPLIER, 1.0, 0.0]


@pytest.mark.parametrize("axis", ["cost", "latency"])
def test_lower_cost_or_latency_never_lowers_reward(axis):
    rng = random.Random(2)
    for _ in range(1000):
        outcomes, costs, latencies, counts, weights = random_group(rng)
        weights |= {"cost": rng.uniform(0, 3), "latency": rng.uniform(0, 3)}
        before = rewards(outcomes, costs, latencies, counts, **weights)
        i = rng.randrange(len(outcomes))
        values = costs if axis == "cost" else latencies
        values[i] *= rng.uniform(0, 1)  # all else equal, member i got cheaper / faster
        after = rewards(outcomes, costs, latencies, counts, **weights)
        assert after[i] >= before[i] - 1e-12


def test_lower_cost_and_latency_score_higher_hand_computed():
    assert rewards([1.0, 1.0], [0.01, 0.02], [1.0, 1.0], [{}, {}], cost=1.0) == [2.0, 1.0]
    assert rewards([1.0, 1.0], [0.0, 0.0], [5.0, 1.0], [{}, {}], latency=0.4) == [1.0, 1.4]


@pytest.mark.parametrize("weight, expected", [(0.5, [1.5, 1.0]), (-0.5, [0.5, 1.0]), (0.0, [1.0, 1.0])])
def test_tool_preference_sign(weight, expected):
    # Member 0 calls search 3 times, member 1 once: n̂_search = [1, 0].
    assert rewards([1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [{"search": 3}, {"search": 1}], search=weight) == expected


def test_absolute_form_values():
    rows = absolute_rewards([1.0, 0.0], [0.01, 0.002], [2.0, 1.0], lambda_cost=10.0, lambda_latency=0.1)
    assert [r["reward"] for r in rows] == pytest.approx([1 - 0.1 - 0.2, 0 - 0.02 - 0.1])
    assert rows[0]["cost_term"] == pytest.approx(-0.1) and rows[0]["latency_term"] == pytest.approx(-0.2)


def test_absolute_mode_through_mix_group(trajectory, task):
    group = [trajectory(calls=[("search", .01, 2.0)]), trajectory(answer=None)]
    cfg = RewardConfig(mode="absolute", lambda_cost=10.0, lambda_latency=0.1, cost_weight=5.0)

    scored = mix_group(group, [1.0, 0.0], task(), cfg, TOOLS)

    assert [t.reward for t in scored] == pytest.approx([0.7, 0.0])


def test_task_preference_overrides_global_key_by_key(task):
    cfg = RewardConfig(cost_weight=1.0, latency_weight=0.2, tool_weights={"search": 0.5})
    t = task(preference={"cost": 0.0, "large_generalist": -1.0})

    w = preference_weights(cfg, t, TOOLS)

    assert w == {"cost": 0.0, "latency": 0.2, "python": 0.0, "search": 0.5, "large_generalist": -1.0, "answer": 0.0}
    cfg.use_task_preference = False
    assert preference_weights(cfg, t, TOOLS)["cost"] == 1.0
    assert preference_weights(cfg, t, TOOLS)["large_generalist"] == 0.0


def test_task_preference_changes_the_reward(trajectory, task):
    group = [trajectory(calls=[("large_generalist", .02, 1.0)]), trajectory(calls=[("search", .001, 1.0)])]
    cfg = RewardConfig(cost_weight=0.0)

    plain = mix_group(group, [1.0, 1.0], task(), cfg, TOOLS)
    avoid = mix_group(group, [1.0, 1.0], task(preference={"large_generalist": -0.5}), cfg, TOOLS)

    assert [t.reward for t in plain] == [1.0, 1.0]
    assert [t.reward for t in avoid] == [0.5, 1.0]


def test_unknown_tool_in_task_preference_is_named(task):
    with pytest.raises(ValueError, match=r"task 'q7': unknown tool 'huge_model' in preference; known: cost, "
                                         r"latency, python, search, large_generalist, answer"):
        preference_weights(RewardConfig(), task("q7", preference={"huge_model": -1.0}), TOOLS)


def test_policy_tokens_out_of_cost_leaves_same_tools_tied(trajectory, task):
    # Two rollouts calling the same search; one wrote more tokens. Priced, the shorter takes the whole cost term;
    # unpriced, they tie and the term drops out. A rollout with a dearer tool still pays for it.
    short = trajectory(calls=[("search", .00001, 1.0), ("answer", 0, 0)], policy_cost=.000002)
    long = trajectory(calls=[("search", .00001, 1.0), ("answer", 0, 0)], policy_cost=.000005)
    large = trajectory(calls=[("large_generalist", .001, 1.0), ("answer", 0, 0)], policy_cost=.000002)

    priced = mix_group([short, long], [1.0, 1.0], task(), RewardConfig(cost_weight=3.0), TOOLS)
    unpriced_cfg = RewardConfig(cost_weight=3.0, policy_tokens_in_cost=False)
    unpriced = mix_group([short, long], [1.0, 1.0], task(), unpriced_cfg, TOOLS)
    with_large = mix_group([short, long, large], [1.0, 1.0, 1.0], task(), unpriced_cfg, TOOLS)

    assert [t.reward for t in priced] == [4.0, 1.0]
    assert [t.reward for t in unpriced] == [1.0, 1.0]
    assert [t.reward_components["cost_usd"] for t in unpriced] == pytest.approx([.00001, .00001])
    assert [t.reward for t in with_large] == [4.0, 4.0, 1.0]
    assert trajectory_cost(long, policy_tokens=False) == pytest.approx(.00001)
    assert long.cost_usd == pytest.approx(.000015)  # the trajectory (and evaluation) still counts the tokens
