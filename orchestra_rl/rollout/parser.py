"""Parse the orchestrator's output into tool calls.

Malformed output never raises: it yields a `ParsedTurn` whose `error` is a message the policy is shown as the
tool response (and can learn from), and the trajectory goes on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from orchestra_rl.types import TOOL_CALL_CLOSE as CLOSE
from orchestra_rl.types import TOOL_CALL_OPEN as OPEN
from orchestra_rl.types import ToolCall

# The longest call body taken at all: a model can write megabytes, and a tool argument of that size is never
# meant (rollout.max_tokens_per_turn bounds a turn far below it).
MAX_CALL_CHARS = 16_384
# Tool arguments are flat in practice; deeper values would strain every later stage (schema validation,
# serialisation between actors) for nothing.
MAX_ARGUMENT_DEPTH = 32


@dataclass
class ParsedTurn:
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None
    content: str = ""  # the turn's text outside its tool calls (a message to the user, in a world with one)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a key twice are ambiguous (json.loads keeps the last: {"name": "python", "name": "answer"}
    would run `answer`): refused."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _DuplicateKey(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _decode(text: str, start: int) -> tuple[Any, int] | str:
    """The JSON value at text[start:] (after whitespace) and where it ends, or an error message. Any failure of
    the decoder is an error message: deeply nested input raises RecursionError, a 5000-digit integer ValueError."""
    start = len(text) - len(text[start:].lstrip())
    try:
        return _DECODER.raw_decode(text, start)
    except _DuplicateKey as e:
        return f"the tool call has the key {e.args[0]!r} twice"
    except json.JSONDecodeError as e:
        return f"the tool call is not valid JSON ({e.msg} at position {e.pos - start})"
    except (RecursionError, ValueError) as e:
        return f"the tool call is not valid JSON ({type(e).__name__})"


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((child, d + 1) for child in (v.values() if isinstance(v, dict) else v))
    return deepest


def _as_call(obj: Any, raw: str) -> ToolCall | str:
    """A ToolCall, or an error message."""
    if not isinstance(obj, dict):
        return 'the tool call must be a JSON object {"name": ..., "arguments": {...}}'
    name, arguments = obj.get("name"), obj.get("arguments", {})
    if not isinstance(name, str) or not name:
        return 'the tool call needs a "name" string'
    if isinstance(arguments, str):  # some models emit arguments as a JSON-encoded string
        decoded = _decode(arguments, 0)
        if isinstance(decoded, str) or decoded[1] != len(arguments.rstrip()):
            return f'"arguments" of tool call {name!r} is a string that is not valid JSON'
        arguments = decoded[0]
    if not isinstance(arguments, dict):
        return f'"arguments" of tool call {name!r} must be a JSON object'
    if _depth(arguments) > MAX_ARGUMENT_DEPTH:
        return f'"arguments" of tool call {name!r} are nested deeper than {MAX_ARGUMENT_DEPTH} levels'
    return ToolCall(name=name, arguments=arguments, raw=raw)


def parse_tool_calls(text: str, max_calls: int = 1) -> ParsedTurn:
    """The calls of one turn: each `<tool_call>` followed by one JSON object and `</tool_call>`. The object is
    read by the JSON decoder, so a string argument may itself contain `</tool_call>` (code that prints it). A
    turn without any call is no error here: whether it may be is the environment's rule (a message to the user
    in a τ²-style world; an error in the QA world)."""
    position = text.find(OPEN)
    calls: list[ToolCall] = []
    outside: list[str] = []
    previous_end = 0
    while position >= 0:
        outside.append(text[previous_end:position])
        body_start = position + len(OPEN)
        if text.find(CLOSE, body_start) < 0:
            return ParsedTurn(error=f"the tool call was not closed with {CLOSE} (output too long?)")
        if text[body_start:].lstrip().startswith(OPEN):
            return ParsedTurn(error=f"a {OPEN} was opened inside another tool call or never closed")
        decoded = _decode(text, body_start)
        if isinstance(decoded, str):
            return ParsedTurn(error=decoded)
        obj, obj_end = decoded
        close = len(text) - len(text[obj_end:].lstrip())
        if not text.startswith(CLOSE, close):
            return ParsedTurn(error=f"the tool call must end with {CLOSE} right after its JSON object")
        if close - body_start > MAX_CALL_CHARS:
            return ParsedTurn(error=f"the tool call is longer than {MAX_CALL_CHARS} characters")
        call = _as_call(obj, text[body_start:close].strip())
        if isinstance(call, str):
            return ParsedTurn(error=call)
        calls.append(call)
        previous_end = close + len(CLOSE)
        position = text.find(OPEN, previous_end)
        if len(calls) > max_calls or (position >= 0 and len(calls) == max_calls):
            n = len(calls) + text.count(OPEN, close + len(CLOSE))
            return ParsedTurn(error=f"{n} tool calls in one turn; at most {max_calls} allowed")
    outside.append(text[previous_end:])
    return ParsedTurn(calls=calls, content="".join(outside).strip())


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
