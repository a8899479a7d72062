"""`orchestra-rl report`: train runs of a sweep side by side, labelled by what the sweep varied."""

import json

import pytest
from rich.console import Console

from orchestra_rl.cli import main
from orchestra_rl.eval.report import load_train_reports, print_runs


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
