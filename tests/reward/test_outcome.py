"""Outcome verifiers, and the LLM judge against a stub of a remote paid OpenAI-compatible API."""

from __future__ import annotations

import pytest

from orchestra_rl.reward.outcome import is_correct, judge, normalize_answer, numeric_match, outcome_score, parse_verdict
from orchestra_rl.tools.base import Pricing
from orchestra_rl.tools.llm import LLMTool


@pytest.mark.parametrize("family, prediction, gold, score", [
    ("arithmetic", "1,234", "1234.0", 1.0),
    ("arithmetic", "1.234e3", "1234", 1.0),
    ("multihop", " 1 234. ", "1234", 1.0),
    ("arithmetic", "1235", "1234", 0.0),
    ("arithmetic", "-17.50", "-17.5", 1.0),
    ("lookup", "Zorbia.", "zorbia", 1.0),  # word answers: exact match after normalisation
    ("lookup", "Zorbi", "zorbia", 0.0),
    ("hard", "nan", "nan", 1.0),  # not a finite number: compared as text
    ("trivia", "1.234e3", "1234", 0.0),  # a family without a verifier: exact match only
    ("trivia", "1,234", "1234.0", 1.0),  # ... which already ignores commas and a trailing .0
])
def test_verifier_by_family(trajectory, task, family, prediction, gold, score):
    assert outcome_score(trajectory(answer=prediction), task(answer=gold, family=family)) == score


def test_no_answer_scores_zero(trajectory, task):
    assert outcome_score(trajectory(answer=None), task(answer="1")) == 0.0


@pytest.mark.parametrize("prediction, gold, family, ok", [
    ("1,234", "1234", "trivia", True), ("1234.0", "1234", "trivia", True), (" Veltoria. ", "veltoria", "trivia", True),
    ("Brenmark   Systems", "brenmark systems", "lookup", True), ("1234.5", "1234", "arithmetic", False),
    (None, "1", "arithmetic", False), ("-15", "-15", "trivia", True), ("12", "-12", "arithmetic", False),
    ("1.5e3", "1500", "arithmetic", True), ("1.5e3", "1500", "trivia", False),
])
def test_is_correct_follows_the_family_rules(prediction, gold, family, ok):
    assert is_correct(prediction, gold, family) is ok


def test_normalize_answer():
    assert normalize_answer("  The   ANSWER,  3.00 ") == "the answer 3"


def test_numeric_match_does_not_confuse_a_number_with_a_word():
    assert numeric_match("12", "twelve") == 0.0
    assert numeric_match("inf", "1e999") == 0.0  # not finite: compared as text


@pytest.mark.parametrize("reply, verdict", [
    ("YES", 1.0), ("yes.", 1.0), ("Yes, they match", 1.0), ("NO", 0.0), ("**No**", 0.0),
    ("maybe", None), ("", None), ("The answer is yes", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.fixture
async def judge_tool(openai_stub_server):
    tool = LLMTool("judge", "grades answers", model="stub-judge", base_url=openai_stub_server.base_url,
                   pricing=Pricing(2.0, 8.0), max_retries=0, timeout_s=5.0)
    yield tool
    await tool.close()


# The stub bills 1000 prompt and 500 completion tokens per call.
JUDGE_CALL_COST = 1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6


async def test_judge_accepts_a_paraphrase_and_reports_its_cost(openai_stub_server, judge_tool, trajectory, task):
    openai_stub_server.answer = "YES"

    score, result = await judge(trajectory(answer="forty-two"), task(answer="42"), judge_tool)

    assert score == 1.0
    assert result.error is None and result.cost_usd == pytest.approx(JUDGE_CALL_COST)
    (request,) = openai_stub_server.requests
    assert request["model"] == "stub-judge"
    prompt = request["messages"][-1]["content"]
    assert "Question: question of t" in prompt
    assert "Gold answer: 42" in prompt and "Predicted answer: forty-two" in prompt


async def test_judge_says_no(openai_stub_server, judge_tool, trajectory, task):
    openai_stub_server.answer = "NO"

    score, result = await judge(trajectory(answer="41"), task(answer="42"), judge_tool)

    assert (score, result.error) == (0.0, None)
    assert result.cost_usd == pytest.approx(JUDGE_CALL_COST)  # a NO is billed like a YES


@pytest.mark.parametrize("answer", ["42", None])
async def test_judge_is_not_asked_when_the_rules_decide(openai_stub_server, judge_tool, trajectory, task, answer):
    openai_stub_server.answer = "NO"

    score, result = await judge(trajectory(answer=answer), task(answer="42"), judge_tool)

    assert score == (1.0 if answer else 0.0)
    assert result.cost_usd == 0.0 and openai_stub_server.calls == 0


async def test_unparseable_judge_reply_falls_back_to_the_rules(openai_stub_server, judge_tool, trajectory, task):
    openai_stub_server.answer = "I cannot tell."

    score, result = await judge(trajectory(answer="forty-two"), task(answer="42"), judge_tool)

    assert score == 0.0
    assert result.error == "judge reply is neither YES nor NO: 'I cannot tell.'"
    assert result.cost_usd == pytest.approx(JUDGE_CALL_COST)  # the reply was still billed


async def test_failed_judge_call_falls_back_to_the_rules(openai_stub_server, judge_tool, trajectory, task):
    openai_stub_server.always_status = 400

    score, result = await judge(trajectory(answer="forty-two"), task(answer="42"), judge_tool)

    assert score == 0.0
    assert "failed after 1 attempt(s)" in result.error
    assert result.cost_usd == 0.0


@pytest.mark.parametrize("fault", ["empty_choices", "not_json"])
async def test_a_malformed_judge_reply_falls_back_to_the_rules(openai_stub_server, judge_tool, trajectory, task,
                                                              fault):
    """A garbled reply comes back from the judge tool as an error result, never an exception: the reward batch
    it belongs to is scored by the rules."""
    if fault == "empty_choices":
        openai_stub_server.empty_choices = True
    else:
        openai_stub_server.not_json_first = 100

    score, result = await judge(trajectory(answer="forty-two"), task(answer="42"), judge_tool)

    assert score == 0.0 and result.error is not None and result.cost_usd == 0.0
