"""A domain's code toolkit: Python functions over its database, written by a model (ToolScale synthesis,
toolscale/) and so untrusted. It is only ever run inside the python tool's sandbox (tools/sandbox.py).

    tools.py    def <tool>(db, <arguments>): returns a JSON-able result; a write tool changes `db` in place
    tools.json  [{"name", "description", "parameters": <a JSON schema object>, "writes": bool}]

One sandbox run loads tools.py, applies a sequence of calls to the database it is given, and prints each call's
result (or error) and the final database: an episode's tool call is one run with one call, a golden replay one run
with all of the task's actions. What the run prints is only data to this process; a toolkit that forges its
output can only fool its own checks, never reach the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from orchestra_rl.config import ToolConfig, ToolsConfig
from orchestra_rl.tools.sandbox import SandboxLimits, run_sandboxed_async

MARK = "@@orchestra-toolkit-result@@"  # starts the one line of the run's result on stdout
MAX_OUTPUT_BYTES = 4 * 2**20  # the final database is printed: more room than the python tool's default

# The program run in the sandbox; the three inputs are JSON string literals, so nothing in them is ever code.
HARNESS = r'''
import inspect, json, sys
_out = sys.stdout
_calls = json.loads(%(calls)s)
_names = json.loads(%(names)s)
_result = {"results": [], "signatures": {}}
try:
    _ns = {"__name__": "tools"}
    exec(compile(json.loads(%(code)s), "tools.py", "exec"), _ns)
    for _n in _names:
        _f = _ns.get(_n)
        _result["signatures"][_n] = list(inspect.signature(_f).parameters) if callable(_f) else None
    db = json.loads(%(db)s)
    for _name, _args in _calls:
        _f = _ns.get(_name)
        try:
            if not callable(_f):
                raise NameError(f"tools.py defines no function {_name}")
            _value = _f(db, **_args)
            _result["results"].append({"text": json.dumps(_value, sort_keys=True, default=str)})
        except Exception as e:
            _result["results"].append({"error": f"{type(e).__name__}: {e}"[:500]})
    _result["db"] = json.loads(json.dumps(db, default=str))
except BaseException as e:
    _result["error"] = f"{type(e).__name__}: {e}"[:500]
_out.write("\n" + %(mark)r + json.dumps(_result) + "\n")
_out.flush()
'''


@dataclass
class ToolkitRun:
    """What one sandbox run of a toolkit gave back."""

    results: list[dict[str, str]] = field(default_factory=list)  # per call: {"text": ...} or {"error": ...}
    db: dict | None = None  # the database after the calls
    signatures: dict[str, list[str] | None] = field(default_factory=dict)  # per asked-for name: its parameters
    error: str | None = None  # the run as a whole failed (tools.py does not load, a limit, no result printed)
    duration_s: float = 0.0


def toolkit_limits(tools: ToolsConfig) -> SandboxLimits:
    """The sandbox limits of model-written tool code: the configured python tool's (its defaults if none is
    configured), with room for the database."""
    python = tools.settings_of_kind("python") or ToolConfig(kind="python")
    limits = SandboxLimits.from_tool_config(python)
    return SandboxLimits(**{**limits.__dict__, "max_output_bytes": max(limits.max_output_bytes, MAX_OUTPUT_BYTES)})


async def run_toolkit(code: str, db: dict, calls: list[tuple[str, dict[str, Any]]], limits: SandboxLimits,
                      names: list[str] = ()) -> ToolkitRun:
    """Apply `calls` to a copy of `db` with the functions of `code`, in the sandbox. `names`: functions whose
    parameter names to report. Never raises for anything the code does: that is in the returned run."""
    literal = lambda value: repr(json.dumps(value))  # noqa: E731 - a Python literal of a JSON string
    program = HARNESS % {"calls": literal([[n, a] for n, a in calls]), "names": literal(list(names)),
                         "code": literal(code), "db": literal(db), "mark": MARK}
    result = await run_sandboxed_async(program, limits)
    line = next((ln for ln in reversed(result.stdout.split("\n")) if ln.startswith(MARK)), None)
    if result.killed_reason is not None or line is None:
        why = result.killed_reason or f"exit code {result.exit_code}, no result printed"
        tail = result.stderr.strip().splitlines()[-1:] or [""]
        return ToolkitRun(error=f"the toolkit's run failed: {why} {tail[0][:200]}".strip(),
                          duration_s=result.duration_s)
    try:
        parsed = json.loads(line[len(MARK):])
        run = ToolkitRun(results=list(parsed.get("results", [])), db=parsed.get("db"),
                         signatures=dict(parsed.get("signatures", {})), error=parsed.get("error"),
                         duration_s=result.duration_s)
    except (ValueError, TypeError, AttributeError) as e:
        return ToolkitRun(error=f"the toolkit's run printed a malformed result: {e}", duration_s=result.duration_s)
    if run.error is None and (not isinstance(run.db, dict) or len(run.results) != len(calls)):
        return ToolkitRun(error="the toolkit's run printed a malformed result", duration_s=result.duration_s)
    return run
