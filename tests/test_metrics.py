"""The call-argument fidelity metric: whether python and search calls carry the task's numbers and names verbatim."""

import pytest
from rich.console import Console

from orchestra_rl.config import load_config
from orchestra_rl.eval.report import print_summary, summarize
from orchestra_rl.metrics import NO_CALL, argument_fidelity, copying_tools, faithful_call, first_calls, names_in
from orchestra_rl.reward.actor import batch_metrics
from orchestra_rl.types import UNKNOWN_TOOL, Task, ToolCallRecord, ToolResult, Trajectory, Turn

ARITHMETIC = "What is 6273 * 76 + 215?"
LOOKUP = "In what year was Fonbrouk Holdings founded?"
MULTIHOP = "How many employees do Goucal Labs and Nalzoum Systems have in total?"
PASSAGES = ["Goucal Labs reported annual revenue of 12 million US dollars and has 190,827 employees.",
            "Nalzoum Systems has 164347 employees."]


def trajectory(task_id: str, family: str, calls: list[tuple[str, dict, str]]) -> Trajectory:
    turns = [Turn(text="", num_tokens=1, finish_reason="tool_call",
                  calls=[ToolCallRecord(turn=i, name=name, arguments=args, result=ToolResult(text))])
             for i, (name, args, text) in enumerate(calls)]
    return Trajectory(task_id=task_id, family=family, group_index=0, token_ids=[1, 2], logprobs=[0.0, -0.5],
                      loss_mask=[0, 1], prompt_length=1, turns=turns, final_answer="1", stop_reason="answer")


def test_python_code_is_faithful_when_every_number_it_uses_was_copied_from_the_question_or_a_tool_response():
    assert faithful_call("python", {"code": "print(6273 * 76 + 215)"}, ARITHMETIC, [])
    assert not faithful_call("python", {"code": "print(6237 * 76 + 215)"}, ARITHMETIC, [])  # a garbled number
    assert not faithful_call("python", {"code": "print(42)"}, ARITHMETIC, [])  # an invented one
    assert not faithful_call("python", {"code": "print('hello')"}, ARITHMETIC, [])  # no number at all
    # multihop: the facts come from the searches (a passage may write thousands separators)
    assert faithful_call("python", {"code": "print(190827 + 164347)"}, MULTIHOP, PASSAGES)
    assert not faithful_call("python", {"code": "print(190827 + 164347)"}, MULTIHOP, PASSAGES[:1])


def test_a_search_is_faithful_when_its_query_carries_one_of_the_questions_names():
    assert names_in(LOOKUP) == {"Fonbrouk Holdings"}  # "In", the question word, is not a name
    assert names_in(MULTIHOP) == {"Goucal Labs", "Nalzoum Systems"}
    assert faithful_call("search", {"query": LOOKUP}, LOOKUP, [])
    assert faithful_call("search", {"query": "Nalzoum Systems employees"}, MULTIHOP, [])
    assert not faithful_call("search", {"query": "Fonbrouk Holding founded"}, LOOKUP, [])
    assert faithful_call("search", {"query": "6273"}, ARITHMETIC, [])  # no name: a number of the question
    assert not faithful_call("search", {"query": "What is"}, ARITHMETIC, [])


def test_fidelity_is_the_share_of_python_and_search_calls_and_eval_and_training_report_it():
    cfg = load_config()
    copying = copying_tools(cfg.tools.tools)
    assert copying == {"python": "python", "search": "search"}
    tasks = [Task("a", "arithmetic", ARITHMETIC, "476963"), Task("m", "multihop", MULTIHOP, "355174"),
             Task("l", "lookup", LOOKUP, "1900")]
    trajectories = [
        trajectory("a", "arithmetic", [("python", {"code": "print(6273 * 76 + 215)"}, "476963"),
                                       ("large_generalist", {"question": "x"}, "The answer is 1.")]),  # not judged
        trajectory("m", "multihop", [("search", {"query": "Goucal Labs employees"}, PASSAGES[0]),
                                     ("search", {"query": "Nalzum Systems employees"}, PASSAGES[1]),  # garbled
                                     ("python", {"code": "print(190827 + 164347)"}, "355174")]),
        trajectory("l", "lookup", [("large_generalist", {"question": LOOKUP}, "The answer is 1900.")]),
    ]
    questions = {t.task_id: t.question for t in tasks}
    assert argument_fidelity(trajectories, questions, copying) == pytest.approx(3 / 4)

    summary = summarize(trajectories, tasks, copying=copying)
    assert summary["overall"]["argument_fidelity"] == pytest.approx(3 / 4)
    assert summary["families"]["arithmetic"]["argument_fidelity"] == 1.0
    assert summary["families"]["multihop"]["argument_fidelity"] == pytest.approx(2 / 3)
    assert summary["families"]["lookup"]["argument_fidelity"] is None  # no python or search call
    console = Console(width=220, record=True)
    print_summary(summary, "eval", console=console)
    assert "arg fidelity" in console.export_text()

    for t in trajectories:
        t.reward = 0.0
    metrics = batch_metrics(trajectories, list(cfg.tools.tools), questions, copying)
    assert metrics["rollout/argument_fidelity"] == pytest.approx(3 / 4)
    assert "rollout/argument_fidelity" not in batch_metrics(trajectories[2:], list(cfg.tools.tools), questions,
                                                            copying)


def test_routing_per_family_is_the_share_of_first_calls_with_their_outcome_and_training_logs_it():
    tools = ["python", "search", "large_generalist"]
    trajectories = [
        trajectory("a1", "arithmetic", [("python", {"code": "print(1)"}, "1"), ("search", {"query": "x"}, "")]),
        trajectory("a2", "arithmetic", [("large_generalist", {"question": "x"}, "1")]),
        trajectory("a3", "arithmetic", [("python", {"code": "print(2)"}, "2")]),
        trajectory("l1", "lookup", [("serach", {"query": "x"}, "")]),  # a made-up name
        trajectory("l2", "lookup", []),
    ]
    routes = first_calls(trajectories, tools)
    assert {f: {t: r["share"] for t, r in by_tool.items()} for f, by_tool in routes.items()} == {
        "arithmetic": {"large_generalist": pytest.approx(1 / 3), "python": pytest.approx(2 / 3)},
        "lookup": {NO_CALL: 0.5, UNKNOWN_TOOL: 0.5}}
    assert routes["arithmetic"]["python"]["outcome"] is None  # not scored yet
    for t, outcome in zip(trajectories, [1.0, 0.0, 0.0, 0.0, 1.0]):
        t.reward, t.reward_components = outcome, {"outcome": outcome}
    metrics = batch_metrics(trajectories, tools)
    assert metrics["route/arithmetic/python"] == pytest.approx(2 / 3)
    assert metrics["route_outcome/arithmetic/python"] == 0.5
    assert metrics["route_outcome/arithmetic/large_generalist"] == 0.0
    assert metrics["route/lookup/no_call"] == 0.5 and metrics["route_outcome/lookup/no_call"] == 1.0
    assert "route/arithmetic/search" not in metrics  # a second call is not the routing decision
