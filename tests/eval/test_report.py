"""Eval summaries, and `orchestra-rl report`: train runs of a sweep side by side, labelled by what the sweep
varied."""

import json

import pytest
from rich.console import Console

from orchestra_rl.cli import main
from orchestra_rl.config import RewardConfig
from orchestra_rl.eval.baselines import baseline_strategies, expand_baselines
from orchestra_rl.eval.pareto import pareto_front
from orchestra_rl.eval.report import (load_train_reports, pass_hat_k, print_routes, print_runs, print_summary,
                                      question_kind, summarize, task_results)
from orchestra_rl.reward.actor import RewardActor
from tests.helpers import make_task, make_trajectory


async def test_accuracy_counts_exactly_what_the_reward_outcome_accepts():
    # (prediction, gold, family): numerically equal but written differently, a word answer, a wrong number, and a
    # family without a numeric verifier, where "1.5e3" is not "1500".
    cases = [("1.5e3", "1500", "arithmetic"), ("17.50", "17.5", "multihop"), ("1 500", "1500", "lookup"),
             ("Veltoria.", "veltoria", "lookup"), ("1501", "1500", "arithmetic"), ("1.5e3", "1500", "trivia")]
    tasks = [make_task(f"t{i}", gold, family) for i, (_, gold, family) in enumerate(cases)]
    trajectories = [make_trajectory(f"t{i}", prediction, family=family)
                    for i, (prediction, _, family) in enumerate(cases)]

    scored = await RewardActor(RewardConfig(), ["answer"]).score(trajectories, {t.task_id: t for t in tasks})
    outcomes = [t.reward_components["outcome"] for t in scored]
    summary = summarize(trajectories, tasks)

    assert outcomes == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert summary["overall"]["accuracy"] == pytest.approx(4 / 6)
    for family in ("arithmetic", "multihop", "lookup", "trivia"):
        of_family = [o for o, (_, _, f) in zip(outcomes, cases) if f == family]
        assert summary["families"][family]["accuracy"] == pytest.approx(sum(of_family) / len(of_family))


def test_routes_show_where_each_kind_of_question_went_first_and_how_that_went():
    # Lookups of two attributes, routed differently: what a question asks can decide where a policy sends it.
    tasks = [make_task("p", "5", "lookup", metadata={"entities": ["Daelora"], "attributes": ["population"]}),
             make_task("f", "1900", "lookup", metadata={"entities": ["Paekstan"], "attributes": ["founded"]}),
             make_task("m", "7", "multihop", metadata={"attributes": ["population", "population"]}),
             make_task("a", "2", "arithmetic", metadata={"expression": "1 + 1"})]
    trajectories = [make_trajectory("p", "5", (("large_generalist", 0.0, 0.0),), family="lookup"),
                    make_trajectory("p", "4", (("large_generalist", 0.0, 0.0),), 0.0, 1, "lookup"),
                    make_trajectory("p", "5", (("search", 0.0, 0.0),), 0.0, 2, "lookup"),
                    make_trajectory("f", "1900", (("search", 0.0, 0.0), ("python", 0.0, 0.0)), family="lookup"),
                    make_trajectory("m", "7", (), family="multihop"),
                    make_trajectory("a", "2", (("python", 0.0, 0.0),), family="arithmetic")]
    assert [question_kind(t) for t in tasks] == ["lookup/population", "lookup/founded", "multihop/population",
                                                 "arithmetic"]

    routes = summarize(trajectories, tasks, ["search", "python", "large_generalist", "answer"])["routes"]
    assert routes == {
        "arithmetic": {"python": {"share": 1.0, "trajectories": 1, "outcome": 1.0}},
        "lookup/founded": {"search": {"share": 1.0, "trajectories": 1, "outcome": 1.0}},
        "lookup/population": {"large_generalist": {"share": pytest.approx(2 / 3), "trajectories": 2, "outcome": 0.5},
                              "search": {"share": pytest.approx(1 / 3), "trajectories": 1, "outcome": 1.0}},
        "multihop/population": {"no_call": {"share": 1.0, "trajectories": 1, "outcome": 1.0}}}
    console = Console(record=True, width=160)
    print_routes(routes, "routes", console)
    row = "│ lookup/population   │ 3 │ large_generalist 0.67 (0.50), search 0.33 (1.00) "
    assert row in console.export_text()


def test_pass_hat_k_is_the_chance_that_k_trials_all_succeed():
    # Task a: 4 of 4 trials solved; b: 2 of 4; c: none. pass^2 of b = C(2,2)/C(4,2) = 1/6.
    trials = [(4, 4), (4, 2), (4, 0)]
    assert pass_hat_k(trials, 1) == pytest.approx((1 + 0.5 + 0) / 3)
    assert pass_hat_k(trials, 2) == pytest.approx((1 + 1 / 6 + 0) / 3)
    assert pass_hat_k(trials, 4) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="pass\\^5 needs at least 5 trials"):
        pass_hat_k(trials, 5)


def test_an_eval_with_trials_reports_pass_hat_k_per_family_and_per_task():
    # Env-graded trials (a τ²-style source): the grade is the environment's, whatever the final answer.
    tasks = [make_task("r/1", "", "tau2_retail", env="tau2_retail"), make_task("r/2", "", "tau2_retail",
                                                                               env="tau2_retail"),
             make_task("q", "7", "arithmetic")]
    trajectories = []
    for task_id, grades in (("r/1", [1.0, 1.0, 0.0]), ("r/2", [0.0, 0.0, 0.0])):
        for g, grade in enumerate(grades):
            t = make_trajectory(task_id, None, calls=(("get_order", 0.0, 0.5),), policy_cost=0.01, group_index=g,
                                family="tau2_retail")
            t.env_outcome, t.env_info, t.stop_reason = grade, {"termination": "user_stop"}, "done"
            trajectories.append(t)
    trajectories += [make_trajectory("q", "7", group_index=g) for g in range(3)]

    summary = summarize(trajectories, tasks)
    retail = summary["families"]["tau2_retail"]
    assert retail["tasks"] == 2 and retail["trajectories"] == 6
    assert retail["pass^1"] == pytest.approx(retail["accuracy"]) == pytest.approx((2 / 3 + 0) / 2)
    assert retail["pass^2"] == pytest.approx((1 / 3 + 0) / 2) and retail["pass^3"] == 0.0
    assert summary["overall"]["pass^3"] == pytest.approx(1 / 3)  # only q solved all three
    console = Console(width=200, record=True)
    print_summary(summary, "eval", console=console)
    assert "pass^3" in console.export_text()

    records = {r["task_id"]: r for r in task_results(trajectories, tasks)}
    assert records["r/1"] | {"cost_usd": None} == {
        "task_id": "r/1", "env": "tau2_retail", "family": "tau2_retail", "trials": 3, "successes": 2,
        "outcomes": [1.0, 1.0, 0.0], "stop_reasons": ["done"] * 3, "terminations": ["user_stop"] * 3,
        "errors": [], "cost_usd": None, "latency_s": 0.5, "turns": 1.0}
    assert records["r/1"]["cost_usd"] == pytest.approx(0.01)
    assert records["q"]["successes"] == 3 and records["q"]["terminations"] == [None] * 3


def summary(accuracy: float, cost: float, mix: dict[str, float]) -> dict:
    return {"trajectories": 8, "accuracy": accuracy, "cost_usd": cost, "latency_s": 1.0,
            "tool_calls_per_trajectory": mix, "reward": accuracy}


def write_job(root, n: int, overrides: list[str], accuracy: float, cost: float, mix: dict[str, float]) -> None:
    job = root / str(n)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "train").mkdir()
    after = {"overall": summary(accuracy, cost, mix), "families": {"arithmetic": summary(accuracy, cost, mix)}}
    (job / "train" / "train_report.json").write_text(json.dumps({"before": after, "after": after}))


@pytest.fixture
def sweep(tmp_path):
    write_job(tmp_path, 0, ["reward=outcome", "seed=0"], 0.9, 0.0012, {"large_generalist": 0.9})
    write_job(tmp_path, 1, ["reward=efficient", "seed=0"], 0.8, 0.0004, {"math_expert": 0.7})
    return tmp_path


def test_runs_are_labelled_by_the_overrides_they_do_not_share(sweep):
    runs = load_train_reports([str(sweep)])
    assert list(runs) == ["reward=outcome", "reward=efficient"]
    assert runs["reward=efficient"]["after"]["overall"]["cost_usd"] == 0.0004


def test_table_shows_cost_per_correct_answer_and_the_tool_mix(sweep):
    console = Console(width=200, record=True)
    print_runs(load_train_reports([str(sweep)]), console)
    text = console.export_text()
    assert "0.001333" in text and "0.000500" in text  # 0.0012 / 0.9 and 0.0004 / 0.8
    assert "large_generalist 0.90" in text and "math_expert 0.70" in text


def test_missing_report_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"report: {tmp_path}: no train_report.json there\n"


def test_the_pareto_front_is_the_points_nothing_beats_cheapest_first():
    points = {"large": (0.0012, 0.75), "best": (0.0003, 0.75), "random": (0.0004, 0.4), "init": (0.0001, 0.0),
              "tie": (0.0003, 0.75), "cheap": (0.0001, 0.0)}
    # large is dominated by best (as accurate, cheaper); random by best too; equal points are all kept.
    assert pareto_front(points) == ["init", "cheap", "best", "tie"]


def test_baseline_tables_route_every_family_as_named(make_config):
    cfg = make_config()
    assert expand_baselines(cfg, ["only:*", "random", "only:python"]) == [
        "only:python", "only:search", "only:math_expert", "only:small_generalist", "only:large_generalist", "random"]
    assert baseline_strategies(cfg, "only:search") == {f: [("search",)] for f in cfg.data.families}
    assert baseline_strategies(cfg, "random")["hard"] == [
        ("python",), ("search",), ("math_expert",), ("small_generalist",), ("large_generalist",)]
    assert baseline_strategies(cfg, "best") == {"arithmetic": [("python",)], "lookup": [("search",)],
                                                "multihop": [("search", "search", "python")],
                                                "hard": [("large_generalist",)]}
    # The dearest and the cheapest model by their prices, under any tool set (a tie goes to the first listed).
    assert expand_baselines(cfg, ["only:priciest", "only:cheapest", "only:large_generalist"]) == [
        "only:large_generalist", "only:small_generalist"]
    unseen = make_config("tools=unseen")
    assert expand_baselines(unseen, ["only:priciest", "only:cheapest"]) == [
        "only:frontier_model", "only:budget_generalist"]
    cheaper = make_config("tools=unseen", "tools.tools.math_specialist.price_out_per_mtok=0.001")
    assert expand_baselines(cheaper, ["only:cheapest"]) == ["only:math_specialist"]
    no_models = make_config(*(f"tools.tools.{t}.enabled=false"
                              for t in ("math_expert", "small_generalist", "large_generalist")))
    assert expand_baselines(no_models, ["only:priciest", "only:cheapest", "best"]) == ["best"]


def test_report_of_a_sweep_draws_its_pareto_plot(sweep, capsys):
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    # efficient: 0.8 at $0.0004; outcome: 0.9 at $0.0012 — neither dominates, both on the front.
    assert "Pareto front (cheapest first): reward=efficient < reward=outcome" in out
    assert (sweep / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(sweep), "--plot", str(sweep / "elsewhere" / "front.png")]) == 0
    assert (sweep / "elsewhere" / "front.png").is_file()
