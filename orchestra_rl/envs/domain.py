"""Function-call domains from a folder (envs/domain_files.py) as environments: a database per episode, the tools its
schema defines, a user, and a grader with τ²-Bench's criteria.

A domain's tools are derived from its schema (`run_tool`, in process: dict work), or are a code toolkit written by a
model (envs/toolkit.py), each call of which runs in the python tool's sandbox on the episode's database.

An episode is a conversation: the scripted user (envs/users.py) opens with the task's reason for calling, the
policy calls the domain's tools (and may still ask a configured expert) or writes a message to the user, and it
ends when the policy writes ###STOP###, the user stops, or the loop's budget runs out (graded 0). The grade is
the product of the task's reward basis, each 1 or 0, as τ²-Bench grades:

  DB           the episode's final database equals the initial one with the golden actions applied
  ACTION       every golden action was called, with the same arguments
  COMMUNICATE  every piece of information to communicate appears in a message of the policy to the user
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from orchestra_rl.config import EnvSourceConfig
from orchestra_rl.envs.base import (Environment, Episode, Grade, Observation, call_configured, offered_tools,
                                    policy_prompt)
from orchestra_rl.envs.domain_files import Domain, DomainTask
from orchestra_rl.envs.qa import CallTool
from orchestra_rl.envs.toolkit import run_toolkit
from orchestra_rl.envs.users import STOP, ScriptedUser
from orchestra_rl.tools.sandbox import SandboxLimits, check_sandbox
from orchestra_rl.types import Task, ToolCall, ToolCallRecord, ToolResult


class ToolError(ValueError):
    pass


def run_tool(domain: Domain, db: dict, name: str, arguments: dict[str, Any]) -> str:
    """One call of a domain tool against `db` (changed in place by a write); the result's text. Raises ToolError
    with the reason the policy is shown."""
    schema = domain.tools[name]["function"]["parameters"]["properties"]
    if set(arguments) != set(schema):
        raise ToolError(f"{name} takes exactly {', '.join(schema)}")
    if not all(isinstance(v, str) for v in arguments.values()):
        raise ToolError(f"{name}: every argument is a string")
    verb, _, rest = name.partition("_")
    for entity, spec in domain.schema.entities.items():
        records = db[entity]
        if verb == "get" and rest == entity:
            record = records.get(arguments[spec.key])
            if record is None:
                raise ToolError(f"no {entity} with {spec.key} {arguments[spec.key]!r}")
            return json.dumps({spec.key: arguments[spec.key], **record})
        for f in spec.find_by:
            if rest == f"{entity}s_by_{f}":
                return json.dumps(sorted(k for k, r in records.items() if r[f] == arguments[f]))
        for f, fs in spec.fields.items():
            if verb == "set" and rest == f"{entity}_{f}":
                key = arguments[spec.key]
                if key not in records:
                    raise ToolError(f"no {entity} with {spec.key} {key!r}")
                if fs.values and arguments["value"] not in fs.values:
                    raise ToolError(f"{f} must be one of {', '.join(fs.values)}")
                records[key][f] = arguments["value"]
                return json.dumps({spec.key: key, **records[key]})
    raise ToolError(f"unknown tool {name!r}")  # unreachable for a name in domain.tools


async def run_code_tools(domain: Domain, db: dict, calls: list[tuple[str, dict[str, Any]]],
                         limits: SandboxLimits) -> tuple[dict, list[ToolResult]]:
    """Calls of a code toolkit's tools, applied in order to a copy of `db` in the sandbox: the database after them,
    and each call's result. A call refused by its schema does not run; a run that fails as a whole changes nothing
    and is every call's error."""
    results: list[ToolResult | None] = []
    runnable: list[tuple[str, dict[str, Any]]] = []
    for name, arguments in calls:
        problem = domain.toolkit[name].check_arguments(arguments)
        results.append(ToolResult(f"Error: {problem}", error=problem) if problem else None)
        if not problem:
            runnable.append((name, arguments))
    if not runnable:
        return db, results
    run = await run_toolkit(domain.code, db, runnable, limits)
    outcomes = iter(run.results if run.error is None else [{"error": run.error}] * len(runnable))
    for i, result in enumerate(results):
        if result is None:
            outcome = next(outcomes)
            results[i] = (ToolResult(outcome["text"]) if "text" in outcome
                          else ToolResult(f"Error: {outcome['error']}", error=outcome["error"]))
    return (db if run.error is not None else run.db), results


def db_hash(db: dict) -> str:
    return hashlib.sha256(json.dumps(db, sort_keys=True).encode()).hexdigest()


def scripted_user(task: DomainTask) -> ScriptedUser:
    opening = " ".join(p for p in (task.user.reason_for_call, task.user.known_info) if p)
    return ScriptedUser(opening, [task.user.task_instructions])


def golden_turns(domain: Domain, task: DomainTask) -> list[str]:
    """The reference policy: one golden call per turn, then the information to communicate, ending the call."""
    return ([ToolCall(a.name, dict(a.arguments)).render() for a in task.actions]
            + [" ".join([*task.communicate_info, "Thank you.", STOP])])


def load_domain_tasks(name: str, domain: Domain, split: str) -> list[Task]:
    tasks = domain.task_split(split)
    if not tasks:
        splits = sorted({t.split for t in domain.tasks})
        raise ValueError(f"env.{name}: domain {domain.name!r} ({domain.folder}) has no task in split {split!r}; "
                         f"its splits: {', '.join(splits)}")
    return [Task(task_id=f"{name}/{t.id}", family=name, question=scripted_user(t).opening, answer="", env=name,
                 metadata={"domain_task": t.id}) for t in tasks]


class DomainEnvironment(Environment):
    """The episodes of one domain folder; `call_tool` runs the configured tools (offered too, except the
    final-answer ones: an episode ends by conversation)."""

    def __init__(self, name: str, source: EnvSourceConfig, domain: Domain, call_tool: CallTool,
                 tool_schemas: list[dict], final_tools: set[str], sandbox: SandboxLimits | None = None):
        if domain.toolkit is not None and sandbox is None:
            raise ValueError(f"env.{name}: domain {domain.name!r} has a code toolkit, which runs only in a sandbox")
        if sandbox is not None:
            check_sandbox(sandbox.mode)  # SandboxUnavailable, saying what is missing, before any episode
        self.name, self.domain, self.call_tool, self.sandbox = name, domain, call_tool, sandbox
        self.system_prompt = policy_prompt(source.system_prompt, domain.policy)
        self.tool_schemas = offered_tools(name, f"domain {domain.name!r}", list(domain.tools.values()), tool_schemas,
                                          final_tools)
        self.known_tools = {s["function"]["name"] for s in self.tool_schemas}
        self.tasks = {t.id: t for t in domain.tasks}
        self._expected: dict[str, dict] = {}  # a task's golden final database, once replayed

    async def expected_db(self, task: DomainTask) -> dict:
        """The initial database with the task's golden actions applied."""
        if task.id not in self._expected:
            db = copy.deepcopy(self.domain.db)
            if self.domain.toolkit is None:
                for a in task.actions:
                    run_tool(self.domain, db, a.name, dict(a.arguments))
            else:
                db, _ = await run_code_tools(self.domain, db, [(a.name, dict(a.arguments)) for a in task.actions],
                                             self.sandbox)
            self._expected[task.id] = db
        return self._expected[task.id]

    async def reset(self, task: Task, group_index: int) -> Episode:
        return DomainEpisode(self, self.tasks[task.metadata["domain_task"]])


class DomainEpisode(Episode):
    def __init__(self, env: DomainEnvironment, task: DomainTask):
        self.env, self.task = env, task
        self.db = copy.deepcopy(env.domain.db)  # this episode's own database
        self.user = scripted_user(task)
        self.opening = self.user.opening
        self.system_prompt, self.tool_schemas = env.system_prompt, env.tool_schemas
        self.called: list[tuple[str, dict]] = []  # the domain calls that succeeded, in order
        self.said: list[str] = []  # the policy's messages to the user
        self.termination: str | None = None

    async def step(self, turn_index: int, message: str, calls: list[ToolCall]) -> Observation:
        records = [ToolCallRecord(turn_index, c.name, c.arguments, await self._call(c)) for c in calls]
        if calls:
            return Observation(records)
        self.said.append(message)
        if STOP in message:
            return self._end("agent_stop")
        reply, stop = self.user.next_reply(transferred=False)
        if stop:
            return self._end("user_stop")
        return Observation(records, user_message=reply)

    async def _call(self, call: ToolCall) -> ToolResult:
        if call.name not in self.env.domain.tools:
            return await call_configured(call, self.env.known_tools, self.env.call_tool, self.opening)
        if self.env.domain.toolkit is not None:
            self.db, (result,) = await run_code_tools(self.env.domain, self.db, [(call.name, call.arguments)],
                                                      self.env.sandbox)
        else:
            try:  # microseconds of dict work: no thread needed
                result = ToolResult(run_tool(self.env.domain, self.db, call.name, call.arguments))
            except ToolError as e:
                result = ToolResult(f"Error: {e}", error=str(e))
        if result.error is None:
            self.called.append((call.name, call.arguments))
        return result

    def _end(self, termination: str) -> Observation:
        self.termination = termination
        return Observation(done=True)

    async def grade(self, stop_reason: str) -> Grade:
        expected = await self.env.expected_db(self.task)
        said = " ".join(self.said).lower()
        checks = {
            "DB": db_hash(self.db) == db_hash(expected),
            "ACTION": all((a.name, dict(a.arguments)) in self.called for a in self.task.actions),
            "COMMUNICATE": all(info.lower() in said for info in self.task.communicate_info),
        }
        basis = {b: float(checks[b]) for b in self.task.reward_basis}
        termination = self.termination or "max_steps"
        outcome = 0.0 if termination == "max_steps" else float(all(basis.values()))
        return Grade(outcome, {"domain": self.env.domain.name, "termination": termination,
                               "db_hash": db_hash(self.db), "reward_breakdown": basis})


def domain_folder(source: EnvSourceConfig, cache_dir: str | Path) -> Path:
    """The source's folder: `path` if set, else the built-in orders domain, generated once into the cache."""
    if source.path:
        return Path(source.path).expanduser()
    from orchestra_rl.data.orders import build_orders_domain

    return build_orders_domain(Path(cache_dir).expanduser())
