"""Outcome o ∈ [0, 1] of a trajectory (docs/rewards.md): a rule-based verifier per task family, or an LLM judge.

The rules are the one definition of a right answer: the reward's outcome, eval accuracy (eval.report) and the
`correct` of SFT demonstrations all call `answer_score`. An environment with a grader of its own (τ²-Bench)
decides instead: its grade (Trajectory.env_outcome) is the outcome. Exact match after normalisation, and for families with
numeric answers, numeric equality ("1,234" = "1234.0" = "1.234e3"). The optional judge asks a model behind an
OpenAI-compatible endpoint whether a prediction the rules reject still means the gold answer (a paraphrase, a
unit written out); only the reward asks it. A judge call costs money like any other LLM call, so its cost
becomes part of the trajectory's cost (see reward.mix.trajectory_cost).
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Any, Callable

from orchestra_rl.types import Task, ToolResult, Trajectory

if TYPE_CHECKING:  # importing openai takes ~1 s; eval and `report` use the rules without it
    from orchestra_rl.tools.llm import LLMTool

log = logging.getLogger(__name__)

Verifier = Callable[[str, str], float]  # (prediction, gold) -> score in [0, 1]


def normalize_answer(s: Any) -> str:
    """Canonical form for comparing answers: lowercase, no commas, no leading "the answer is", no trailing period
    or ".0", single spaces."""
    s = " ".join(str(s).lower().replace(",", "").split()).rstrip(".")
    s = re.sub(r"^the (?:final )?answer is:? ", "", s)
    return re.sub(r"(?<=\d)\.0+$", "", s)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _number(text: str) -> float | None:
    """The number `text` states, ignoring thousands separators, spaces and a trailing period; else None."""
    try:
        value = float(text.replace(",", "").replace(" ", "").rstrip("."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numeric_match(prediction: str, gold: str) -> float:
    """Numerically equal answers match; answers that are not numbers fall back to exact match."""
    p, g = _number(prediction), _number(gold)
    if p is None or g is None:
        return exact_match(prediction, gold)
    # Relative tolerance far below one unit of any answer of the built-in world (integers up to ~10^8).
    return float(math.isclose(p, g, rel_tol=1e-9, abs_tol=1e-9))


# Verifier per task family; families not listed use exact match. Every built-in family has numeric answers
# (lookup: populations, hard: patent counts); numeric_match leaves word answers to exact match.
VERIFIERS: dict[str, Verifier] = {
    "arithmetic": numeric_match,
    "multihop": numeric_match,
    "lookup": numeric_match,
    "hard": numeric_match,
}


def choice_match(prediction: str, gold: str) -> float:
    """A multiple-choice answer: the letter chosen ("B", "(b)", "B. Paris", "Answer: B") against the gold letter."""
    def letter(text: str) -> str | None:
        text = re.sub(r"^\s*(?:the )?(?:final )?answer(?: is)?\s*:?\s*", "", text.strip(), flags=re.IGNORECASE)
        found = re.match(r"\(?([A-Za-z])\)?(?=$|[\s.):,])", text)
        return found.group(1).upper() if found else None

    chosen, right = letter(prediction), letter(gold)
    return float(chosen is not None and chosen == right)


# Verifier per benchmark answer type (HLE's `answer_type`; FRAMES answers are exactMatch).
ANSWER_TYPE_VERIFIERS: dict[str, Verifier] = {"exactMatch": numeric_match, "multipleChoice": choice_match}


def answer_score(prediction: str | None, gold: str, family: str) -> float:
    """o ∈ [0, 1] of `prediction` by the rules of its task family. No answer scores 0."""
    if prediction is None:
        return 0.0
    return VERIFIERS.get(family, exact_match)(prediction, gold)


def is_correct(prediction: str | None, gold: str, family: str) -> bool:
    """Whether the rules accept `prediction` fully: what eval accuracy counts."""
    return answer_score(prediction, gold, family) == 1.0


def outcome_score(trajectory: Trajectory, task: Task) -> float:
    """o ∈ [0, 1]: the environment's grade where it has a grader (τ²-Bench), else the trajectory's final answer
    by the rules of the task's family."""
    if trajectory.env_outcome is not None:
        return trajectory.env_outcome
    return answer_score(trajectory.final_answer, task.answer, task.family)


def solved(trajectory: Trajectory, task: Task) -> bool:
    """Whether the trajectory fully solved its task: what eval accuracy counts."""
    return outcome_score(trajectory, task) == 1.0


JUDGE_PROMPT = """You grade answers. Decide whether the predicted answer means the same as the gold answer \
for the question (ignore formatting, units written out, capitalisation). Reply with exactly one word: YES or NO.

Question: {question}
Gold answer: {gold}
Predicted answer: {prediction}"""


def parse_verdict(reply: str) -> float | None:
    """1.0 for YES, 0.0 for NO (the first word, any case or punctuation), None if the reply is neither."""
    words = re.findall(r"[a-z]+", reply.lower())
    return {"yes": 1.0, "no": 0.0}.get(words[0]) if words else None


async def judge(trajectory: Trajectory, task: Task, judge_tool: LLMTool) -> tuple[float, ToolResult]:
    """o ∈ {0, 1} by an LLM judge, with the judge call's ToolResult (its cost, latency, error).

    The judge is asked only when the rules say wrong: a rule match is certain and costs nothing. When the call
    fails or the reply is neither YES nor NO, the rule-based outcome stands (logged; `error` is set on the
    result) so one bad judge reply never loses a batch.
    """
    rule = outcome_score(trajectory, task)
    if trajectory.env_outcome is not None:
        return rule, ToolResult(text="judge not asked: graded by its environment")
    if trajectory.final_answer is None or rule == 1.0:
        return rule, ToolResult(text="judge not asked: " + ("no answer" if rule == 0.0 else "rule match"))
    question = JUDGE_PROMPT.format(question=task.question, gold=task.answer, prediction=trajectory.final_answer)
    result = await judge_tool.call({"question": question})
    verdict = None if result.error else parse_verdict(result.text)
    if verdict is None:
        if result.error is None:
            result.error = f"judge reply is neither YES nor NO: {result.text[:200]!r}"
        log.warning("judge %s on task %s: %s; using the rule-based outcome %.1f", judge_tool.name,
                    task.task_id, result.error, rule)
        return rule, result
    return verdict, result


# The judge of QA benchmarks (envs/benchmark.py), in the style of HLE's: extract the response's final answer, then
# compare it with the correct answer only, without solving the problem again.
BENCHMARK_JUDGE_PROMPT = """Judge whether the response to the question below is correct, given the correct answer.

[question]: {question}

[response]: {response}

[correct_answer]: {gold}

Reply in exactly this format, one field per line:
extracted_final_answer: the final answer in the response, or None if it states none
reasoning: whether extracted_final_answer matches [correct_answer]; do not solve the problem again, do not argue \
for another answer
correct: yes if extracted_final_answer matches [correct_answer] (for numbers, within a small margin of error), \
no otherwise"""


def parse_benchmark_verdict(reply: str) -> float | None:
    """1.0 / 0.0 from the reply's `correct: yes|no` line; None if it has none."""
    found = re.search(r"^\W*correct\W*:\W*(yes|no)\b", reply, flags=re.IGNORECASE | re.MULTILINE)
    return None if found is None else float(found.group(1).lower() == "yes")
