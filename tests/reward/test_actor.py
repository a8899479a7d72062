"""RewardActor: grouping by task, judge calls, summary; used directly and as a real Ray actor."""

from __future__ import annotations

import time

import pytest
import ray

from orchestra_rl.config import RewardConfig, ToolConfig
from orchestra_rl.reward.actor import RewardActor, make_reward_actor, summary
from orchestra_rl.tools.base import ToolContext

TOOLS = ["search", "large_generalist", "answer"]


def judge_config(**overrides) -> ToolConfig:
    return ToolConfig(**{"kind": "llm", "model": "stub-judge", "base_url": "experts", "price_in_per_mtok": 2.0,
                         "price_out_per_mtok": 8.0, "max_retries": 0, **overrides})


async def test_scores_interleaved_groups_in_input_order(trajectory, task):
    # Two tasks' groups, interleaved. Task a: both right, the cheaper one scores 2; task b: one right, one wrong.
    batch = [trajectory("a", "7", [("search", .01, 1.0)]), trajectory("b", "3"),
             trajectory("a", "7", [("large_generalist", .03, 1.0)]), trajectory("b", "4")]
    tasks = {"a": task("a", "7"), "b": task("b", "3", preference={"cost": 0.0})}
    actor = RewardActor(RewardConfig(cost_weight=1.0), TOOLS)

    scored = await actor.score(batch, tasks)

    assert [(t.task_id, t.reward) for t in scored] == [("a", 2.0), ("b", 1.0), ("a", 1.0), ("b", 0.0)]
    assert batch[0].reward is None  # the inputs are left as they were
    means = summary(scored)
    assert means["reward"] == pytest.approx(1.0)
    assert means["outcome"] == pytest.approx(0.75)
    assert means["cost_usd"] == pytest.approx(0.01)
    assert means["tool_search"] == pytest.approx(0.25)
    assert means["calls_large_generalist"] == pytest.approx(0.25)
    assert not any(k.startswith("pref_") for k in means)


async def test_missing_task_is_named(trajectory, task):
    actor = RewardActor(RewardConfig(), TOOLS)
    with pytest.raises(ValueError, match="no Task given for trajectories of task id\\(s\\): b"):
        await actor.score([trajectory("a"), trajectory("b")], {"a": task("a")})


async def test_judge_calls_run_concurrently_and_their_cost_counts(openai_stub_server, trajectory, task):
    openai_stub_server.answer = "YES"
    openai_stub_server.delay_s = 0.5
    # Four paraphrased answers need the judge; the exact one does not.
    batch = [trajectory("a", "seven", group_index=i) for i in range(4)] + [trajectory("a", "7", group_index=4)]
    actor = RewardActor(RewardConfig(cost_weight=1.0, judge_tool="judge"), TOOLS, judge_config(),
                        ToolContext(experts_base_url=openai_stub_server.base_url))
    try:
        start = time.perf_counter()
        scored = await actor.score(batch, {"a": task("a", "7")})
        elapsed = time.perf_counter() - start
    finally:
        await actor.close()

    assert openai_stub_server.calls == 4 and openai_stub_server.peak_in_flight == 4
    assert elapsed < 4 * 0.5
    judge_cost = 1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6
    assert [t.reward_components["judge_cost_usd"] for t in scored] == pytest.approx([judge_cost] * 4 + [0.0])
    assert [t.reward_components["cost_usd"] for t in scored] == pytest.approx([judge_cost] * 4 + [0.0])
    # All correct; the unjudged answer was the cheapest: ĉ = 1 for it, 0 for the others.
    assert [t.reward for t in scored] == [1.0, 1.0, 1.0, 1.0, 2.0]
    assert summary(scored)["judge_failed"] == 0.0


@pytest.mark.integration
async def test_ray_actor_with_judge(ray_local, openai_stub_server, make_config, trajectory, task):
    openai_stub_server.answer = "NO"
    cfg = make_config("reward.cost_weight=1.0")
    cfg.tools.tools["judge"] = judge_config()
    cfg.reward.judge_tool = "judge"
    actor = make_reward_actor(cfg, ToolContext(experts_base_url=openai_stub_server.base_url))
    try:
        batch = [trajectory("a", "seven", [("python", .001, 0.1)]), trajectory("a", "7", [("python", .002, 0.1)])]
        # The world's preset preferences name configured tools: large_generalist is one.
        tasks = {"a": task("a", "7", preference={"large_generalist": -1.0})}

        scored = await actor.score.remote(batch, tasks)
        await actor.close.remote()
    finally:
        ray.kill(actor)

    assert openai_stub_server.calls == 1
    assert [t.reward for t in scored] == [0.0, 2.0]  # the unjudged answer is also the cheaper one
    assert scored[0].reward_components["cost_usd"] == pytest.approx(.001 + 1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6)
    assert scored[1].reward_components["pref_large_generalist"] == -1.0
    assert summary(scored)["outcome"] == 0.5


def test_training_step_scoring_reads_the_rollouts_from_the_object_store(ray_local, make_config):
    """The trainer hands the actor the rollout manager's references, never the trajectories: the actor fetches
    them, puts them in task order, scores them and returns the batch metrics separately (num_returns=2)."""
    from tests.helpers import make_task, make_trajectory

    tasks = [make_task("a", "7"), make_task("b", "3")]
    # Two worker calls that finished out of order, each holding parts of both groups.
    chunks = [ray.put([make_trajectory("b", "3", group_index=1), make_trajectory("a", "7", [("search", .01, 1.0)])]),
              ray.put([make_trajectory("b", "4", group_index=0),
                       make_trajectory("a", "7", [("large_generalist", .03, 1.0)], group_index=1)])]
    actor = make_reward_actor(make_config("reward.cost_weight=1.0"), ToolContext())
    scored_ref, metrics_ref = actor.score_rollouts.options(num_returns=2).remote(chunks, tasks, TOOLS)
    metrics = ray.get(metrics_ref)
    scored = ray.get(scored_ref)
    assert [(t.task_id, t.group_index) for t in scored] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert [t.reward for t in scored] == [2.0, 1.0, 0.0, 1.0]
    assert metrics["rollout/reward"] == pytest.approx(1.0) and metrics["reward/outcome"] == pytest.approx(0.75)
    assert metrics["tools/search"] == pytest.approx(0.25) and metrics["rollout/tokens"] == 8
    ray.kill(actor)
