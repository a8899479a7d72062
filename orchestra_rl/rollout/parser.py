"""Parse the orchestrator's output into tool calls.

Malformed output never raises: it yields a `ParsedTurn` whose `error` is a message the policy is shown as the
tool response (and can learn from), and the trajectory goes on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from orchestra_rl.types import ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclass
class ParsedTurn:
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None


def _parse_one(raw: str) -> ToolCall | str:
    """A ToolCall, or an error message."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        return f"the tool call is not valid JSON ({e.msg} at position {e.pos})"
    if not isinstance(obj, dict):
        return 'the tool call must be a JSON object {"name": ..., "arguments": {...}}'
    name, arguments = obj.get("name"), obj.get("arguments", {})
    if not isinstance(name, str) or not name:
        return 'the tool call needs a "name" string'
    if isinstance(arguments, str):  # some models emit arguments as a JSON-encoded string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return f'"arguments" of tool call {name!r} is a string that is not valid JSON'
    if not isinstance(arguments, dict):
        return f'"arguments" of tool call {name!r} must be a JSON object'
    return ToolCall(name=name, arguments=arguments, raw=raw)


def parse_tool_calls(text: str, max_calls: int = 1) -> ParsedTurn:
    bodies = _CALL.findall(text)
    opened = text.count(OPEN)
    if not bodies:
        if opened:
            return ParsedTurn(error=f"the tool call was not closed with {CLOSE} (output too long?)")
        return ParsedTurn(error=f"no tool call found: call one tool as {OPEN}{{\"name\": ..., \"arguments\": "
                                f"{{...}}}}{CLOSE}; finish with the answer tool")
    if opened > len(bodies):
        return ParsedTurn(error=f"a {OPEN} was opened inside another tool call or never closed")
    if len(bodies) > max_calls:
        return ParsedTurn(error=f"{len(bodies)} tool calls in one turn; at most {max_calls} allowed")
    calls = []
    for raw in bodies:
        parsed = _parse_one(raw.strip())
        if isinstance(parsed, str):
            return ParsedTurn(error=parsed)
        calls.append(parsed)
    return ParsedTurn(calls=calls)


def tool_call_regex(tool_schemas: list[dict], max_chars: int = 32) -> str:
    """A regex that only admits one well-formed call of one of these tools (string arguments only).

    Used with vLLM structured outputs to make an untrained policy call tools (benchmarks, smoke tests).
    """
    alternatives = []
    for schema in tool_schemas:
        fn = schema["function"]
        params = fn.get("parameters", {})
        # Plain ASCII argument text: any character would let an untrained policy spend its budget on multi-byte
        # tokens.
        args = ", ".join(f'"{re.escape(p)}": "[a-zA-Z0-9 .,?+*/()-]{{1,{max_chars}}}"' for p in params.get("required", []))
        alternatives.append(r'\{"name": "' + re.escape(fn["name"]) + r'", "arguments": \{' + args + r"\}\}")
    return re.escape(OPEN) + r"\n(" + "|".join(alternatives) + r")\n" + re.escape(CLOSE)
