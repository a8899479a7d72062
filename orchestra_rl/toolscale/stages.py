"""The stages of ToolScale synthesis, each one validated model answer per item (toolscale/llm.py `ask`):

    ideas      the run            → domains to build: a name and a description each
    schema     a domain           → its entities (domain.json) and the policy its agent must follow
    database   a domain           → records of every entity, checked against the schema
    toolkit    a domain           → Python functions over the database with their OpenAI schemas; loaded in the
                                    sandbox, where each function must exist with the parameters its schema names
    intents    a domain           → what its users want to get done
    tasks      a domain, intent   → tasks: the user's scenario, golden actions, what the agent must communicate
    evolve     a task             → a harder variant of it

What a check refuses is shown to the model, which answers again (synth.max_attempts in all). Whether a task's
golden actions really solve it is the execution filter's question (toolscale/replay.py), not a stage's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestra_rl.config import SynthConfig
from orchestra_rl.toolscale.llm import Asked, SynthLLM, ask
from orchestra_rl.envs.domain_files import (Action, DomainError, DomainSchema, EntitySpec, ToolSpec, UserScenario,
                                            check_db)
from orchestra_rl.envs.toolkit import run_toolkit
from orchestra_rl.tools.sandbox import SandboxLimits

SYSTEM = ("You are ToolScale, a designer of realistic environments for training tool-using AI agents: stateful "
          "domains with a database, tools over it, and verifiable user tasks. Answer with one JSON object of the "
          "shape asked for, and nothing else.")


@dataclass
class DomainDraft:
    """A domain as far as the stages have built it."""

    name: str
    description: str
    entities: dict[str, Any] = field(default_factory=dict)  # domain.json's entities
    policy: str = ""
    db: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)  # ToolSpec fields, without the code
    code: str = ""  # tools.py
    intents: list[str] = field(default_factory=list)

    def schema_json(self) -> str:
        return json.dumps({"name": self.name, "entities": self.entities}, indent=1)

    def tool_specs(self) -> dict[str, ToolSpec]:
        return {t["name"]: ToolSpec.model_validate(t) for t in self.tools}


@dataclass
class TaskDraft:
    domain: str
    id: str
    task: dict[str, Any]  # user, actions, communicate_info, reward_basis (domain_files.DomainTask's fields)
    difficulty: str = "base"


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Idea(_Answer):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,39}$")
    description: str = Field(min_length=10)


class IdeasAnswer(_Answer):
    domains: list[Idea] = Field(min_length=1)


class SchemaAnswer(_Answer):
    entities: dict[str, EntitySpec] = Field(min_length=1)
    policy: str = Field(min_length=20)


class DatabaseAnswer(_Answer):
    db: dict[str, dict[str, dict[str, Any]]]


class GeneratedTool(ToolSpec):
    code: str = Field(min_length=1)  # the function's Python source


class ToolkitAnswer(_Answer):
    tools: list[GeneratedTool] = Field(min_length=1)


class IntentsAnswer(_Answer):
    intents: list[str] = Field(min_length=1)


class TaskBody(_Answer):
    user: UserScenario
    actions: list[Action] = Field(min_length=1)
    communicate_info: list[str] = Field(default_factory=list)
    reward_basis: list[str] = Field(min_length=1)


class TasksAnswer(_Answer):
    tasks: list[TaskBody] = Field(min_length=1)


class EvolvedAnswer(_Answer):
    task: TaskBody


@dataclass
class StageResult:
    """One item's outcome: what it produced (empty when dropped), and why it was dropped."""

    items: list[Any]
    asked: Asked

    @property
    def drop(self) -> str | None:
        return None if self.items else self.asked.drop


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


async def ideas(llm: SynthLLM, cfg: SynthConfig, _: None, limits: SandboxLimits) -> StageResult:
    topics = f" Draw on these topics: {'; '.join(cfg.topics)}." if cfg.topics else ""
    prompt = (f"Stage: ideas.\nPropose {cfg.num_domains} distinct customer-service domains in which an agent "
              f"serves users through tools over a database (a library, a clinic's appointments, ...).{topics}\n"
              'Shape: {"domains": [{"name": "snake_case_name", "description": "one paragraph"}]}')
    asked = await ask(llm, _messages(prompt), IdeasAnswer, None, cfg.max_attempts)
    if asked.value is None:
        return StageResult([], asked)
    unique = {d.name: DomainDraft(d.name, d.description) for d in asked.value.domains}
    return StageResult(list(unique.values())[:cfg.num_domains], asked)


async def schema(llm: SynthLLM, cfg: SynthConfig, draft: DomainDraft, limits: SandboxLimits) -> StageResult:
    prompt = (f"Stage: schema.\nDomain: {draft.name}: {draft.description}\nDesign its database: a few entities, "
              "each with a key field name, its fields (an enumerated field lists its values) and the fields records "
              "are looked up by; and the policy (rules) its agent must follow.\n"
              'Shape: {"entities": {"entity": {"key": "entity_id", "fields": {"field": {}, "status": {"values": '
              '["a", "b"]}}, "find_by": ["field"]}}, "policy": "..."}')

    async def check(answer: SchemaAnswer) -> str | None:
        for entity, spec in answer.entities.items():
            if not entity.isidentifier():
                return f"entity name {entity!r} is not an identifier"
            missing = [f for f in spec.find_by if f not in spec.fields]
            if missing:
                return f"entities.{entity}.find_by: {missing[0]!r} is not one of its fields"
        return None

    asked = await ask(llm, _messages(prompt), SchemaAnswer, check, cfg.max_attempts)
    if asked.value is None:
        return StageResult([], asked)
    entities = {k: v.model_dump(exclude_defaults=True) for k, v in asked.value.entities.items()}
    return StageResult([replace(draft, entities=entities, policy=asked.value.policy)], asked)


async def database(llm: SynthLLM, cfg: SynthConfig, draft: DomainDraft, limits: SandboxLimits) -> StageResult:
    prompt = (f"Stage: database.\nDomain: {draft.name}: {draft.description}\nSchema:\n{draft.schema_json()}\n"
              f"Write about {cfg.records_per_entity} varied, realistic records of every entity; every field is a "
              "string, an enumerated one takes one of its values.\n"
              'Shape: {"db": {"entity": {"<key value>": {"field": "value"}}}}')
    domain_schema = DomainSchema(name=draft.name, entities=draft.entities)

    async def check(answer: DatabaseAnswer) -> str | None:
        try:
            check_db(domain_schema, answer.db, "db")
        except DomainError as e:
            return str(e)
        empty = [e for e in draft.entities if not answer.db[e]]
        return f"db.{empty[0]}: no records" if empty else None

    asked = await ask(llm, _messages(prompt), DatabaseAnswer, check, cfg.max_attempts)
    return StageResult([replace(draft, db=asked.value.db)] if asked.value else [], asked)


async def toolkit(llm: SynthLLM, cfg: SynthConfig, draft: DomainDraft, limits: SandboxLimits) -> StageResult:
    sample = {e: dict(list(records.items())[:2]) for e, records in draft.db.items()}
    prompt = (f"Stage: toolkit.\nDomain: {draft.name}: {draft.description}\nSchema:\n{draft.schema_json()}\n"
              f"Policy:\n{draft.policy}\nSample records:\n{json.dumps(sample, indent=1)}\n"
              "Write the agent's tools: Python functions `def name(db, arg, ...)` over `db` (the database as a dict "
              "of entity -> key -> record), using only the standard library. A tool that changes the database "
              "(writes: true) changes `db` in place; every tool returns a JSON-able result and raises an exception "
              "with a clear message when a request is invalid.\n"
              'Shape: {"tools": [{"name": "...", "description": "...", "parameters": {"type": "object", '
              '"properties": {"arg": {"type": "string", "description": "..."}}, "required": ["arg"]}, '
              '"writes": false, "code": "def name(db, arg):\\n    ..."}]}')

    async def check(answer: ToolkitAnswer) -> str | None:
        names = [t.name for t in answer.tools]
        if len(set(names)) != len(names):
            return "two tools have the same name"
        for t in answer.tools:
            problem = t.check_parameters()
            if problem:
                return f"tool {t.name}: {problem}"
        run = await run_toolkit(_module(answer), draft.db, [], limits, names=names)
        if run.error is not None:
            return f"the tools' code does not load in the sandbox: {run.error}"
        for t in answer.tools:
            params = run.signatures.get(t.name)
            wanted = ["db", *t.parameters["properties"]]
            if params is None:
                return f"the code defines no function {t.name}"
            if params[:1] != ["db"] or set(params) != set(wanted):
                return f"{t.name}'s parameters are ({', '.join(params)}); its schema asks for ({', '.join(wanted)})"
        return None

    asked = await ask(llm, _messages(prompt), ToolkitAnswer, check, cfg.max_attempts)
    if asked.value is None:
        return StageResult([], asked)
    tools = [t.model_dump(exclude={"code"}) for t in asked.value.tools]
    return StageResult([replace(draft, tools=tools, code=_module(asked.value))], asked)


def _module(answer: ToolkitAnswer) -> str:
    return "\n\n\n".join(t.code.strip() for t in answer.tools) + "\n"


def _context(draft: DomainDraft) -> str:
    tools = json.dumps([{k: t[k] for k in ("name", "description", "parameters", "writes")} for t in draft.tools],
                       indent=1)
    return (f"Domain: {draft.name}: {draft.description}\nPolicy:\n{draft.policy}\nDatabase:\n"
            f"{json.dumps(draft.db, indent=1)}\nTools:\n{tools}\n")


async def intents(llm: SynthLLM, cfg: SynthConfig, draft: DomainDraft, limits: SandboxLimits) -> StageResult:
    prompt = (f"Stage: intents.\n{_context(draft)}List {cfg.intents_per_domain} different things users of this "
              'domain call to get done, each answerable with these tools.\nShape: {"intents": ["..."]}')
    asked = await ask(llm, _messages(prompt), IntentsAnswer, None, cfg.max_attempts)
    return StageResult([replace(draft, intents=asked.value.intents[:cfg.intents_per_domain])] if asked.value else [],
                       asked)


def _check_task(draft: DomainDraft, body: TaskBody, where: str) -> str | None:
    specs = draft.tool_specs()
    for j, action in enumerate(body.actions):
        spec = specs.get(action.name)
        if spec is None:
            return f"{where}.actions[{j}]: unknown tool {action.name!r}; tools: {', '.join(specs)}"
        problem = spec.check_arguments(action.arguments)
        if problem:
            return f"{where}.actions[{j}]: {problem}"
    bad = [b for b in body.reward_basis if b not in ("DB", "ACTION", "COMMUNICATE")]
    return f"{where}.reward_basis: {bad[0]!r} is not DB, ACTION or COMMUNICATE" if bad else None


TASK_SHAPE = ('{"user": {"reason_for_call": "...", "known_info": "...", "task_instructions": "..."}, "actions": '
              '[{"name": "tool", "arguments": {"arg": "value"}}], "communicate_info": ["..."], "reward_basis": '
              '["DB", "COMMUNICATE"]}')


async def tasks(llm: SynthLLM, cfg: SynthConfig, item: tuple[DomainDraft, int], limits: SandboxLimits
                ) -> StageResult:
    draft, i = item
    prompt = (f"Stage: tasks.\n{_context(draft)}User intent: {draft.intents[i]}\nWrite {cfg.tasks_per_intent} "
              "tasks of this intent about specific records of the database: the user's scenario, the golden actions "
              "(the tool calls, with exact arguments, that fulfil it by the policy), the facts from the tools' results "
              "the agent must tell the user (communicate_info), and what the task is graded on (reward_basis: DB for "
              f"the final database, COMMUNICATE for the facts told).\nShape: {{\"tasks\": [{TASK_SHAPE}]}}")

    async def check(answer: TasksAnswer) -> str | None:
        return next((p for k, t in enumerate(answer.tasks) if (p := _check_task(draft, t, f"tasks[{k}]"))), None)

    asked = await ask(llm, _messages(prompt), TasksAnswer, check, cfg.max_attempts)
    if asked.value is None:
        return StageResult([], asked)
    return StageResult([TaskDraft(draft.name, f"i{i}_t{k}", t.model_dump()) for k, t in
                        enumerate(asked.value.tasks[:cfg.tasks_per_intent])], asked)


async def evolve(llm: SynthLLM, cfg: SynthConfig, item: tuple[DomainDraft, TaskDraft], limits: SandboxLimits
                 ) -> StageResult:
    draft, base = item
    prompt = (f"Stage: evolve.\n{_context(draft)}Task:\n{json.dumps(base.task, indent=1)}\nWrite a harder variant "
              "of this task: more steps, a condition to check first, or a detail to find out; with its own golden "
              f"actions.\nShape: {{\"task\": {TASK_SHAPE}}}")

    async def check(answer: EvolvedAnswer) -> str | None:
        if answer.task.model_dump() == base.task:
            return "the variant is the task itself"
        return _check_task(draft, answer.task, "task")

    asked = await ask(llm, _messages(prompt), EvolvedAnswer, check, cfg.max_attempts)
    if asked.value is None:
        return StageResult([], asked)
    return StageResult([TaskDraft(base.domain, f"{base.id}_evolved", asked.value.task.model_dump(), "evolved")], asked)
