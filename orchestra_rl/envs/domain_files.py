"""A function-call domain as a folder of files: a database, tools derived from its schema, tasks with golden actions.

    domain.json   {"name", "entities": {entity: {"key", "fields": {field: {"values"?, "writable"?}}, "find_by"?}}}
    db.json       {entity: {key value: {field: value}}}
    policy.md     the rules the agent must follow (its system prompt, inside <policy>)
    tasks.json    [{"id", "split", "user": {"reason_for_call", "known_info", "task_instructions"},
                    "actions": [{"name", "arguments"}], "communicate_info": [...], "reward_basis": [...],
                    "difficulty"?}]
    tools.json    optional: a code toolkit's tools, [{"name", "description", "parameters", "writes"}]
    tools.py      with tools.json: their Python functions over the database (envs/toolkit.py; run sandboxed)

Without tools.json, the tools are derived from the schema: those of an entity `order` with key `order_id` are
`get_order(order_id)`, `find_orders_by_<f>(<f>)` for each field in find_by, and `set_order_<f>(order_id, value)`
for each writable field (value one of its `values`, when listed). Loading checks every file against this format and every task's golden actions against the tools: a bad
folder is one line naming the file and the field, before anything runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REWARD_BASES = ("DB", "ACTION", "COMMUNICATE")  # what a task is graded on (τ²-Bench's names)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    values: list[str] | None = None  # the allowed values, if the field is an enumeration
    writable: bool = False


class EntitySpec(_Strict):
    key: str
    fields: dict[str, FieldSpec]
    find_by: list[str] = Field(default_factory=list)


class DomainSchema(_Strict):
    name: str
    entities: dict[str, EntitySpec]


class UserScenario(_Strict):
    reason_for_call: str
    known_info: str = ""
    task_instructions: str = ""


class Action(_Strict):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class DomainTask(_Strict):
    id: str
    split: str
    user: UserScenario
    actions: list[Action] = Field(default_factory=list)
    communicate_info: list[str] = Field(default_factory=list)
    reward_basis: list[Literal["DB", "ACTION", "COMMUNICATE"]] = Field(default_factory=lambda: ["DB"])
    difficulty: str = "base"  # a synthesised task's: base, or evolved (made harder from a base task)


class ToolSpec(_Strict):
    """A tool of a code toolkit: its OpenAI function schema's parts, and whether it changes the database."""

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]{0,63}$")
    description: str
    parameters: dict[str, Any]
    writes: bool = False

    def openai_schema(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def check_parameters(self) -> str | None:
        """What is wrong with `parameters` as an object schema of named arguments, if anything."""
        p = self.parameters
        if p.get("type") != "object" or not isinstance(p.get("properties"), dict):
            return "parameters must be a JSON schema of type object with properties"
        bad = [k for k in p["properties"] if not k.isidentifier() or k == "db"]
        if bad:
            return f"argument name {bad[0]!r} is not a Python identifier other than db"
        required = p.get("required", [])
        if not isinstance(required, list) or not set(required) <= set(p["properties"]):
            return "required must list some of the properties"
        return None

    def check_arguments(self, arguments: dict[str, Any]) -> str | None:
        """Why a call with these arguments is refused before it runs (unknown or missing names), if it is."""
        properties, required = self.parameters["properties"], self.parameters.get("required", [])
        unknown = sorted(set(arguments) - set(properties))
        missing = [r for r in required if r not in arguments]
        if unknown:
            return f"{self.name} has no argument {unknown[0]!r}; it takes {', '.join(properties) or 'none'}"
        if missing:
            return f"{self.name} needs the argument {missing[0]!r}"
        return None


class DomainError(ValueError):
    """A domain folder that does not follow the format: one line, naming the file and the field."""


class Domain:
    """A loaded, checked domain folder. `tools` holds each tool's OpenAI schema by name."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DomainError(f"{self.folder}: no such domain folder")
        self.schema = _parse(self.folder / "domain.json", DomainSchema)
        self.policy = _read(self.folder / "policy.md")
        self.db: dict[str, dict[str, dict[str, Any]]] = _load_json(self.folder / "db.json")
        self._check_db()
        self.toolkit: dict[str, ToolSpec] | None = None  # a code toolkit's specs, by name
        self.code: str | None = None  # its tools.py
        self.tools = self._load_toolkit() if (self.folder / "tools.json").exists() else self._tool_schemas()
        tasks = _load_json(self.folder / "tasks.json")
        if not isinstance(tasks, list):
            raise DomainError(f"{self.folder / 'tasks.json'}: must be a list of tasks")
        self.tasks = [_parse_obj(self.folder / "tasks.json", f"[{i}]", DomainTask, t) for i, t in enumerate(tasks)]
        self._check_tasks()

    @property
    def name(self) -> str:
        return self.schema.name

    def _check_db(self) -> None:
        check_db(self.schema, self.db, self.folder / "db.json")

    def _load_toolkit(self) -> dict[str, dict]:
        path = self.folder / "tools.json"
        specs = _load_json(path)
        if not isinstance(specs, list):
            raise DomainError(f"{path}: must be a list of tools")
        self.toolkit = {}
        for i, obj in enumerate(specs):
            spec = _parse_obj(path, f"[{i}]", ToolSpec, obj)
            problem = spec.check_parameters()
            if problem or spec.name in self.toolkit:
                raise DomainError(f"{path}: [{i}]: {problem or f'tool {spec.name!r} appears twice'}")
            self.toolkit[spec.name] = spec
        self.code = _read(self.folder / "tools.py")
        return {name: spec.openai_schema() for name, spec in self.toolkit.items()}


    def _tool_schemas(self) -> dict[str, dict]:
        tools: dict[str, dict] = {}
        for entity, spec in self.schema.entities.items():
            for f in spec.find_by:
                if f not in spec.fields:
                    raise DomainError(f"{self.folder / 'domain.json'}: entities.{entity}.find_by: no field {f!r}")
            tools[f"get_{entity}"] = _schema(f"get_{entity}", f"The {entity} with this {spec.key}.",
                                             {spec.key: {"type": "string"}})
            for f in spec.find_by:
                tools[f"find_{entity}s_by_{f}"] = _schema(
                    f"find_{entity}s_by_{f}", f"The {spec.key}s of every {entity} with this {f}.",
                    {f: {"type": "string"}})
            for f, fs in spec.fields.items():
                if fs.writable:
                    value = {"type": "string", **({"enum": fs.values} if fs.values else {})}
                    tools[f"set_{entity}_{f}"] = _schema(f"set_{entity}_{f}", f"Set the {f} of a {entity}.",
                                                         {spec.key: {"type": "string"}, "value": value})
        return tools

    def _check_tasks(self) -> None:
        path = self.folder / "tasks.json"
        seen: set[str] = set()
        for i, task in enumerate(self.tasks):
            if task.id in seen:
                raise DomainError(f"{path}: [{i}].id: {task.id!r} appears twice")
            seen.add(task.id)
            for j, action in enumerate(task.actions):
                schema = self.tools.get(action.name)
                if schema is None:
                    raise DomainError(f"{path}: [{i}].actions[{j}].name: unknown tool {action.name!r}")
                if self.toolkit is not None:
                    problem = self.toolkit[action.name].check_arguments(action.arguments)
                    if problem:
                        raise DomainError(f"{path}: [{i}].actions[{j}].arguments: {problem}")
                    continue
                params = schema["function"]["parameters"]["properties"]
                if set(action.arguments) != set(params):
                    raise DomainError(f"{path}: [{i}].actions[{j}].arguments: {action.name} takes "
                                      f"{', '.join(params)}")

    def task_split(self, split: str) -> list[DomainTask]:
        return [t for t in self.tasks if t.split == split]


def check_db(schema: DomainSchema, db: Any, path: Path | str) -> None:
    """`db` holds every entity of `schema`, each record with exactly its fields and enumerated values; else a
    DomainError naming the record."""
    if not isinstance(db, dict):
        raise DomainError(f"{path}: must map each entity to its records")
    for entity, spec in schema.entities.items():
        records = db.get(entity)
        if not isinstance(records, dict):
            raise DomainError(f"{path}: {entity}: missing, or not a mapping of {spec.key} to records")
        for key, record in records.items():
            where = f"{path}: {entity}.{key}"
            if not isinstance(record, dict) or set(record) != set(spec.fields):
                raise DomainError(f"{where}: a record must have exactly the fields {', '.join(spec.fields)}")
            for name, f in spec.fields.items():
                if f.values is not None and record[name] not in f.values:
                    raise DomainError(f"{where}.{name}: {record[name]!r} is not one of {', '.join(f.values)}")
    unknown = sorted(set(db) - set(schema.entities))
    if unknown:
        raise DomainError(f"{path}: entity {unknown[0]!r} is not in domain.json")


def _schema(name: str, description: str, properties: dict[str, dict]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": list(properties)}}}


def _read(path: Path) -> str:
    if not path.is_file():
        raise DomainError(f"{path}: missing")
    return path.read_text()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise DomainError(f"{path}: not JSON: {e}") from None


def _parse_obj(path: Path, prefix: str, model: type[BaseModel], obj: Any) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        error = e.errors()[0]
        where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        raise DomainError(f"{path}: {where.lstrip('.') or '(top)'}: {error['msg']}") from None


def _parse(path: Path, model: type[BaseModel]) -> Any:
    return _parse_obj(path, "", model, _load_json(path))
