"""The execution filter: a task is kept only if its own golden actions prove it, run twice in the sandbox on fresh
copies of its domain's database. A task is dropped, with the reason counted, when

    replay_failed      the toolkit's run failed as a whole (a crash of the process, a limit, hostile code stopped)
    action_error       a golden action raised (the tool refused its arguments, or its code is wrong)
    no_effect          a write tool was called and the database did not change
    read_only_wrote    only read tools were called and the database changed
    corrupts_database  the final database no longer fits the domain's schema
    nondeterministic   the second replay gave other results or another final database
    uncommunicable     something the agent must communicate is in none of the actions' results
    near_duplicate     another kept task has the same golden actions and a scenario this similar (word-set Jaccard)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from orchestra_rl.toolscale.stages import DomainDraft, TaskDraft
from orchestra_rl.envs.domain import db_hash
from orchestra_rl.envs.domain_files import DomainError, DomainSchema, check_db
from orchestra_rl.envs.toolkit import ToolkitRun, run_toolkit
from orchestra_rl.tools.sandbox import SandboxLimits


@dataclass
class Filtered:
    kept: list[TaskDraft] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # reason -> tasks
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first dropped task's detail


def _words(task: TaskDraft) -> set[str]:
    user = task.task["user"]
    text = " ".join(user.get(k, "") for k in ("reason_for_call", "known_info", "task_instructions"))
    return set(re.findall(r"\w+", text.lower()))


def _actions(task: TaskDraft) -> list[tuple[str, dict]]:
    return [(a["name"], a["arguments"]) for a in task.task["actions"]]


def _verdict(draft: DomainDraft, task: TaskDraft, first: ToolkitRun, second: ToolkitRun) -> tuple[str, str] | None:
    """(reason, detail) if the replays do not prove the task; None if they do."""
    if first.error is not None:
        return "replay_failed", first.error
    errors = [(a["name"], r["error"]) for a, r in zip(task.task["actions"], first.results) if "error" in r]
    if errors:
        return "action_error", f"{errors[0][0]}: {errors[0][1]}"
    writes = {t["name"] for t in draft.tools if t.get("writes")}
    changed = db_hash(first.db) != db_hash(draft.db)
    if any(name in writes for name, _ in _actions(task)) and not changed:
        return "no_effect", "its write actions left the database as it was"
    if not any(name in writes for name, _ in _actions(task)) and changed:
        return "read_only_wrote", "a read tool changed the database"
    try:
        check_db(DomainSchema(name=draft.name, entities=draft.entities), first.db, "final database")
    except DomainError as e:
        return "corrupts_database", str(e)
    if second.error is not None or second.results != first.results or db_hash(second.db) != db_hash(first.db):
        return "nondeterministic", "a second replay gave other results or another database"
    said = " ".join(r["text"] for r in first.results).lower()
    missing = [info for info in task.task.get("communicate_info", []) if info.lower() not in said]
    if missing:
        return "uncommunicable", f"{missing[0]!r} is in no action's result"
    return None


async def replay_filter(draft: DomainDraft, tasks: list[TaskDraft], limits: SandboxLimits,
                        near_duplicate: float) -> Filtered:
    """The tasks of one domain that their golden replays prove, in order, without near-duplicates."""
    out = Filtered()
    for task in tasks:
        runs = [await run_toolkit(draft.code, draft.db, _actions(task), limits) for _ in range(2)]
        verdict = _verdict(draft, task, *runs)
        if verdict is None:
            words = _words(task)
            twin = next((k for k in out.kept if _actions(k) == _actions(task)
                         and len(words & _words(k)) / max(1, len(words | _words(k))) >= near_duplicate), None)
            verdict = ("near_duplicate", f"like {twin.id}") if twin else None
        if verdict is None:
            out.kept.append(task)
        else:
            reason, detail = verdict
            out.dropped[reason] += 1
            out.examples.setdefault(reason, f"{task.domain}/{task.id}: {detail}")
    return out
