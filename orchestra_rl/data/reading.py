"""How the task world is read: the conventions its corpus writes facts in, and the calls that read them.

The SFT demonstrations (sft/scripted.py) and the tiny model's reading drills (models/pretrain.py) fill their search
queries and python programs with these, so both teach the same way of reading the world.
"""

from __future__ import annotations

import re

from orchestra_rl.types import Task

# Search keywords of the multihop attributes (each word appears next to its fact in the corpus).
ATTRIBUTE_KEYWORDS = {"population": "population", "employees": "employees", "area_km2": "area",
                      "founded": "founded", "birth_year": "born"}
UNKNOWN = "unknown"  # the answer a demonstration gives when the tool responses do not contain one
_NUMBER = re.compile(r"\d[\d,]*\d|\d")  # as the corpus writes numbers: with or without thousands separators


def find_span(text: str, value: str) -> str | None:
    """`value` as written in `text` (a number may be written with thousands separators), or None."""
    if re.fullmatch(r"\d+", value):
        return next((m.group() for m in _NUMBER.finditer(text) if m.group().replace(",", "") == value), None)
    return value if value in text else None


_ARITHMETIC_QUESTION = re.compile(r"What is (.+)\?")


def search_query(task: Task, j: int) -> str:
    """The query of the task's j-th search, as the world's conventions read it: the question itself; for a
    multihop task, entity j and its attribute's keyword (one search per entity, in the question's order)."""
    if task.family != "multihop":
        return task.question
    entity, attribute = task.metadata["entities"][j], task.metadata["attributes"][j]
    return f"{entity} {ATTRIBUTE_KEYWORDS.get(attribute, attribute.replace('_', ' '))}"


def python_code(task: Task, responses: list[str]) -> str:
    """The program computing the task once every number of its expression has been read (in the question:
    arithmetic; in the searches' passages: multihop). Before that it can only print the question."""
    expression = expression_read(task, responses)
    return f"print({expression})" if expression else f"print({task.question!r})"


def expression_read(task: Task, responses: list[str]) -> str | None:
    """The task's arithmetic expression once every number of it has been read (in the question: arithmetic; in
    the responses' passages: multihop), else None."""
    m = _ARITHMETIC_QUESTION.fullmatch(task.question)
    expression = task.metadata.get("expression") or (m.group(1) if m else "")
    seen = "\n".join([task.question, *responses])
    if re.search(r"\d", expression) and all(find_span(seen, n) for n in re.findall(r"\d+", expression)):
        return expression
    return None
