"""A scripted orchestrator: demonstrations of well-formed tool calls for the SFT warm start.

`ScriptedPolicy` stands where the vLLM engine stands in the agent loop (the `Engine` protocol): it reads the
context so far (decoded with the policy's tokenizer), recognises the task by its question and the tool responses
received, and writes the next turn as a tool call in the chat template's format. Its token ids are what the
policy "sampled" (logprob 0.0), so a demonstration is a `Trajectory` like any rollout, with real tool results.

Tool choice is varied on purpose, and blind to the task: every family draws from one pool of strategies (each
that solves some family: expected accuracy >= MIN_STRATEGY_ACCURACY under the configured tools and experts, see
data/strategies.py), rotating through them over group indices, so a lookup question is as likely to go to python
as an arithmetic one. With sft.read_until_answered the pool holds first calls only, and what follows a first call
is decided by what is still unread, one rule for every family (ScriptedPolicy._reading_call). SFT then teaches the
format, how to fill a tool's arguments from the question and how to read tool responses; which tool suits which
task, and which is worth its cost, is left for RL. Arguments are filled as well as the tool allows (a search for
the question, the expression once its numbers are known; a python call on a question without arithmetic prints
the question: a call that cannot help). Answers come only from tool responses: the policy knows the gold answer,
but uses it only to recognise which number in a search passage is the fact asked for.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

from orchestra_rl.config import Config, SFTConfig
from orchestra_rl.data.strategies import expected_outcomes
from orchestra_rl.data.reading import UNKNOWN, expression_read, find_span, python_code, search_query
from orchestra_rl.rollout.engine import Generation, scripted_generation
from orchestra_rl.types import Task, ToolCall

# A strategy is in the demonstrations' pool when its expected accuracy reaches this on some family. With the
# default tools and experts: python, math_expert, small_generalist, large_generalist (arithmetic), search (lookup),
# search -> search -> python (multihop).
MIN_STRATEGY_ACCURACY = 0.25

_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)
_EXPERT_ANSWER = re.compile(r"The answer is (.+)\.", re.DOTALL)
# Markers the python tool adds when a program did not run cleanly (stderr, exit code, a limit).
_PYTHON_FAILURE = ("[stderr]", "[exit code", "[error:")


EXPERT_REQUEST = "Solve the task."


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """One tool call exactly as the chat template renders an assistant's call."""
    return ToolCall(name, arguments).render()


def thought(task: Task) -> str:
    """The reasoning that opens the first turn (sft.think; every turn with sft.think_every_call), the same for every
    family and naming no tool: the question's entity names first, then the question without them ("Feimora: What
    is the population of?"), so that what is asked is the last thing before the call, where the policy chooses its
    tool. The tiny policy's state there is mostly the tokens right before it: with the question restated verbatim
    (its name last) the families stayed as confused as without a thought; with the names first they separate better
    and RL moves every family towards its own route (docs/benchmarks.md). A question without entities (arithmetic)
    is restated as it is."""
    return _think(_names_first(task))


def _think(*lines: str) -> str:
    """A thought as the chat template writes it: its lines inside <think>...</think>, then a newline."""
    return "<think>" + "\n".join(lines) + "</think>\n"


def _names_first(task: Task) -> str:
    names = task.metadata.get("entities", [])
    asked = task.question
    for name in names:
        asked = asked.replace(name, "")
    asked = re.sub(r"\s+", " ", asked).replace(" ?", "?").strip()
    return f"{'; '.join(names) + ': ' if names else ''}{asked}"


def progress(task: Task, responses: list[str], count: bool = False) -> str:
    """The thought after tool responses with sft.think_progress: what has been read so far, by one rule in every
    family and naming no tool. Each of the question's entity names with its fact once a line of a response holds
    both, then the answer as "result" once a response holds it ("answer" would name the answer tool); "?" for what
    is still unread ("Feimora: 41200; result: 41200" behind a lookup's search, "Nalzoum Systems: 4180; Jaestan
    Labs: ?; result: ?" behind a multihop question's first), a number without thousands separators, as a python
    expression or an answer takes it. The names-first thought restates what is asked; this writes what decides the
    next call, whether every fact asked has been read, right before that call. As in the demonstrations' answers,
    the gold answer and the expression's numbers only recognise a fact where a response states it. With `count`
    (sft.think_count) it opens with how many of the names are read ("1 of 2 names read; Nalzoum Systems: ..."):
    whether the question's names are all read becomes two small numbers to compare."""
    return _think(_read_so_far(task, responses, count))


def _read_so_far(task: Task, responses: list[str], count: bool = False) -> str:
    facts = facts_read(task, responses)
    counted = [f"{sum(fact is not None for fact in facts.values())} of {len(facts)} names read"] if count else []
    read = [f"{name}: {fact or '?'}" for name, fact in facts.items()]
    answer = task.answer if find_span("\n".join(responses), task.answer) else "?"
    return "; ".join([*counted, *read, f"result: {answer}"])


def facts_read(task: Task, responses: list[str]) -> dict[str, str | None]:
    """Each of the question's entity names with its fact once a line of a response holds both (else None)."""
    facts = [*re.findall(r"\d+", task.metadata.get("expression", "")), task.answer]
    lines = [line for response in responses for line in response.splitlines()]
    return {name: next((fact for line in lines if name in line for fact in facts if find_span(line, fact)), None)
            for name in task.metadata.get("entities", [])}


def turn_thought(thinking: SFTConfig | None, task: Task, responses: list[str]) -> str:
    """The thought a demonstration's turn opens with after `responses` (none without sft.think): the names-first
    thought on the first turn; on later ones what has been read (sft.think_progress), the first thought again
    (sft.think_every_call), both in one thought, the first thought's line above what has been read (both flags:
    a copy of an earlier line, so the question's names are written right above the line that must repeat them),
    or none."""
    if thinking is None or not thinking.think:
        return ""
    if not responses:
        return thought(task)
    if thinking.think_progress and thinking.think_every_call:
        return _think(_names_first(task), _read_so_far(task, responses, thinking.think_count))
    if thinking.think_progress:
        return progress(task, responses, thinking.think_count)
    return thought(task) if thinking.think_every_call else ""


def demo_strategies(cfg: Config) -> dict[str, list[tuple[str, ...]]]:
    """Per family, the tool sequences (answer call not included) a demonstration may use: the same pool for
    every family, each strategy that solves some family, in a fixed order."""
    outcomes = expected_outcomes(cfg)
    pool = list(dict.fromkeys(s.tools for s in outcomes if s.accuracy >= MIN_STRATEGY_ACCURACY))
    if cfg.sft.read_until_answered:  # the first call is the demonstration's choice; reading decides the rest
        pool = list(dict.fromkeys(tools[:1] for tools in pool))
    solvable = {s.family for s in outcomes if s.accuracy >= MIN_STRATEGY_ACCURACY}
    missing = [f for f in cfg.data.families if f not in solvable]
    if missing:
        raise ValueError(f"no enabled tool strategy reaches accuracy {MIN_STRATEGY_ACCURACY} for families "
                         f"{', '.join(missing)}: enable their tools (tools.tools) or experts (data.experts)")
    return {family: list(pool) for family in cfg.data.families}


def read_expert(response: str) -> str:
    m = _EXPERT_ANSWER.fullmatch(response.strip())
    return m.group(1).strip() if m else UNKNOWN


def read_python(response: str) -> str:
    if response.startswith("Error:") or any(marker in response for marker in _PYTHON_FAILURE):
        return UNKNOWN
    lines = response.strip().splitlines()
    return lines[-1].strip() if lines else UNKNOWN


class ScriptedPolicy:
    """The Engine protocol, scripted. `for_group(g)` gives the policy of group index g (its strategy choice)."""

    def __init__(self, tokenizer: Any, tasks: list[Task], strategies: dict[str, list[tuple[str, ...]]],
                 tool_kinds: dict[str, str], answer_tool: str, seed: int = 0, group_index: int = 0,
                 thinking: SFTConfig | None = None, search_tool: str | None = None, python_tool: str | None = None):
        self.tokenizer, self.thinking = tokenizer, thinking  # thinking: the sft settings of its thoughts
        self.tasks_by_question = {t.question: t for t in tasks}
        self.strategies, self.tool_kinds, self.answer_tool = strategies, tool_kinds, answer_tool
        self.search_tool, self.python_tool = search_tool, python_tool  # what sft.read_until_answered may call
        self.seed, self.group_index = seed, group_index
        self.expert_gets_task: dict[str, bool] = {}  # llm tool name -> include_task

    @classmethod
    def from_config(cls, cfg: Config, tokenizer: Any, tasks: list[Task],
                    strategies: dict[str, list[tuple[str, ...]]] | None = None) -> "ScriptedPolicy":
        """The demonstrator (strategies: demo_strategies; it thinks as sft.think and sft.think_every_call say), or a
        fixed baseline's strategy table (eval; no thought: a baseline is judged by its calls)."""
        enabled = {name: t.kind for name, t in cfg.tools.tools.items() if t.enabled}
        answer_tool = cfg.tools.enabled_of_kind("answer")  # validate() ensures one
        policy = cls(tokenizer, tasks, strategies or demo_strategies(cfg), enabled, answer_tool, seed=cfg.seed,
                     thinking=cfg.sft if strategies is None else None,
                     search_tool=cfg.tools.enabled_of_kind("search"), python_tool=cfg.tools.enabled_of_kind("python"))
        policy.expert_gets_task = {n: t.include_task for n, t in cfg.tools.tools.items() if t.kind == "llm"}
        return policy

    def for_group(self, group_index: int) -> "ScriptedPolicy":
        view = copy.copy(self)
        view.group_index = group_index
        return view

    def strategy(self, task: Task) -> tuple[str, ...]:
        """The tools this policy calls on `task`: a per-task offset rotated by the group index, so a group's
        first len(options) rollouts each use a different strategy."""
        options = self.strategies.get(task.family)
        if not options:
            raise ValueError(f"task {task.task_id}: no demonstration strategy for family {task.family!r}")
        offset = int(hashlib.sha256(f"{self.seed}/{task.task_id}".encode()).hexdigest()[:8], 16)
        return options[(offset + self.group_index) % len(options)]

    async def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0,
                       top_p: float = 1.0, stop_token_ids: list[int] | None = None,
                       stop: list[str] | None = None, regex: str | None = None) -> Generation:
        """The next turn for this context. Sampling arguments do not apply; a turn longer than max_tokens is
        cut there, as an engine would."""
        text = self.next_turn(self.tokenizer.decode(prompt_ids, skip_special_tokens=False))
        return scripted_generation(self.tokenizer, text, max_tokens, stop_token_ids)

    def next_turn(self, context: str) -> str:
        task = self.task_in(context)
        responses = _RESPONSE.findall(context)
        name, arguments = self.next_call(task, responses)
        return turn_thought(self.thinking, task, responses) + format_tool_call(name, arguments)

    def task_in(self, context: str) -> Task:
        # The longest question in the context: the task's own (the policy's calls may repeat it; no tool
        # response contains a question).
        found = [q for q in self.tasks_by_question if q in context]
        if not found:
            raise ValueError(f"no known task question in the context: {context[-300:]!r}")
        return self.tasks_by_question[max(found, key=len)]

    def next_call(self, task: Task, responses: list[str]) -> tuple[str, dict[str, Any]]:
        """(tool name, arguments) after `responses` (one per call made so far)."""
        plan = self.strategy(task)
        if self.thinking is not None and self.thinking.read_until_answered:
            return self._reading_call(task, plan[0], responses)
        step = len(responses)
        if step < len(plan):
            return plan[step], self._arguments(task, plan, step, responses)
        return self.answer_tool, {"answer": self._answer(task, plan[:step], responses)}

    def _reading_call(self, task: Task, first: str, responses: list[str]) -> tuple[str, dict[str, Any]]:
        """sft.read_until_answered: after the first call, what is still unread decides, the same rule in every
        family: the answer once a response holds it (or an expert has answered); else an entity name whose fact
        is unread is searched (each name once); else, once every number of the task's expression has been read,
        python computes it; else the answer the last response gives. The calls made so far are this rule's own
        earlier decisions, replayed over the responses."""
        calls: tuple[str, ...] = (first,)
        for k in range(1, len(responses) + 1):
            calls += (self._after_reading(task, calls, responses[:k]),)
        step = len(responses)
        if calls[step] == self.answer_tool:
            return self.answer_tool, {"answer": self._reading_answer(task, calls[:step], responses)}
        return calls[step], self._arguments(task, calls, step, responses)

    def _after_reading(self, task: Task, calls: tuple[str, ...], responses: list[str]) -> str:
        """The tool the reading rule calls after `calls` and their `responses`."""
        if self.tool_kinds[calls[-1]] == "llm" or find_span(responses[-1], task.answer):
            return self.answer_tool
        searched = sum(self.tool_kinds[c] == "search" for c in calls)
        unread = [name for name, fact in facts_read(task, responses).items() if fact is None]
        if self.search_tool and unread and searched < len(task.metadata.get("entities", [])):
            return self.search_tool
        if self.python_tool and calls[-1] != self.python_tool and expression_read(task, responses):
            return self.python_tool
        return self.answer_tool

    def _reading_answer(self, task: Task, called: tuple[str, ...], responses: list[str]) -> str:
        span = find_span(responses[-1], task.answer) if self.tool_kinds[called[-1]] != "llm" else None
        return span or self._answer(task, called, responses)

    def _arguments(self, task: Task, plan: tuple[str, ...], step: int,
                   responses: list[str]) -> dict[str, Any]:
        """Arguments of the plan's step-th call, from the question and the responses so far."""
        kind = self.tool_kinds[plan[step]]
        if kind == "llm":
            # Experts configured with include_task receive the task itself: the call only has to route it.
            return {"question": EXPERT_REQUEST if self.expert_gets_task.get(plan[step]) else task.question}
        if kind == "search":
            return {"query": search_query(task, plan[:step].count(plan[step]))}
        if kind == "python":
            return {"code": python_code(task, responses)}
        raise ValueError(f"the scripted policy cannot call tool {plan[step]!r} of kind {kind!r}")

    def _answer(self, task: Task, called: tuple[str, ...], responses: list[str]) -> str:
        """What the last tool response says the answer is."""
        if not called:
            return UNKNOWN
        kind, last = self.tool_kinds[called[-1]], responses[-1]
        if kind == "llm":
            return read_expert(last)
        if kind == "python":
            return read_python(last)
        if kind == "search" and task.family != "multihop":
            return find_span(last, task.answer) or UNKNOWN
        return UNKNOWN  # e.g. multihop searches that did not return both facts
