import re

import pytest

from orchestra_rl.rollout.parser import parse_tool_calls, tool_call_regex


def test_one_valid_call():
    parsed = parse_tool_calls('thinking...<tool_call>\n{"name": "search", "arguments": {"query": "pop"}}\n</tool_call>')
    assert parsed.error is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [("search", {"query": "pop"})]


def test_the_text_outside_the_calls_is_the_turns_message():
    parsed = parse_tool_calls('Let me look. <tool_call>{"name": "search", "arguments": {"query": "pop"}}</tool_call> ')
    assert parsed.content == "Let me look." and len(parsed.calls) == 1
    # No call at all is not an error of the parser: a message to the user, where the world has one.
    parsed = parse_tool_calls("Your order is cancelled. ###STOP###")
    assert parsed.calls == [] and parsed.error is None and parsed.content == "Your order is cancelled. ###STOP###"


def test_arguments_as_json_string_are_accepted():
    parsed = parse_tool_calls('<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>')
    assert parsed.calls[0].arguments == {"code": "print(1)"}


@pytest.mark.parametrize("text, message", [
    ('<tool_call>{"name": "search", "arguments": {"query": "x"', "not closed"),
    ('<tool_call>{"name": search}</tool_call>', "not valid JSON"),
    ('<tool_call>["search"]</tool_call>', "must be a JSON object"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'needs a "name"'),
    ('<tool_call>{"name": "search", "arguments": [1]}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "a", "arguments": "{oops"}</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>',
     "2 tool calls in one turn; at most 1 allowed"),
    ('<tool_call><tool_call>{"name": "a", "arguments": {}}</tool_call>', "opened inside another"),
])
def test_malformed_output_gives_a_clear_error_not_an_exception(text, message):
    parsed = parse_tool_calls(text)
    assert parsed.calls == []
    assert message in parsed.error


def test_several_calls_allowed_when_configured():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>'
    parsed = parse_tool_calls(text, max_calls=2)
    assert [c.name for c in parsed.calls] == ["a", "b"] and parsed.error is None


def test_guided_regex_admits_exactly_well_formed_calls_of_known_tools():
    schemas = [{"function": {"name": "search", "parameters": {"required": ["query"]}}},
               {"function": {"name": "answer", "parameters": {"required": ["answer"]}}}]
    rx = re.compile(tool_call_regex(schemas))
    ok = '<tool_call>\n{"name": "answer", "arguments": {"answer": "42"}}\n</tool_call>'
    assert rx.fullmatch(ok) and parse_tool_calls(ok).calls[0].arguments == {"answer": "42"}
    assert not rx.fullmatch(ok.replace("answer", "python", 1))
    assert not rx.fullmatch(ok.replace('"42"', '"4"2"'))


@pytest.mark.parametrize("text, message", [
    ("<tool_call>" + "[" * 5000 + "]" * 5000 + "</tool_call>", "not valid JSON (RecursionError)"),
    ('<tool_call>{"name": "python", "arguments": {"n": ' + "9" * 5000 + "}}</tool_call>", "not valid JSON (ValueError)"),
    ('<tool_call>{"name": "python", "name": "answer", "arguments": {}}</tool_call>', "the key 'name' twice"),
    ('<tool_call>{"name": "a", "arguments": {"x": 1, "x": 2}}</tool_call>', "the key 'x' twice"),
    ('<tool_call>{"name": "python", "arguments": {"code": "' + "x" * 20_000 + '"}}</tool_call>', "longer than"),
    ('<tool_call>{"name": "a", "arguments": {}} trailing</tool_call>', "right after its JSON object"),
    ('<tool_call>{"name": "a", "arguments": ' + '{"k": ' * 40 + "1" + "}" * 40 + "}</tool_call>", "deeper than 32"),
])
def test_hostile_calls_are_refused_with_a_message(text, message):
    parsed = parse_tool_calls(text)
    assert parsed.calls == [] and message in parsed.error


def test_a_string_argument_may_contain_the_closing_tag():
    code = 'print("</tool_call>")'
    parsed = parse_tool_calls('<tool_call>{"name": "python", "arguments": {"code": "print(\\"</tool_call>\\")"}}'
                              "</tool_call>")
    assert parsed.error is None and parsed.calls[0].arguments == {"code": code}


def test_fuzzed_outputs_never_raise():
    """Seeded generation of a few thousand outputs near the format (truncations, splices, nesting, duplicated
    keys, stray tags): the parser answers each with calls or an error message, never an exception."""
    import json
    import random

    rng = random.Random(0)
    pieces = ["<tool_call>", "</tool_call>", "{", "}", "[", "]", '"name"', '"arguments"', ":", ",", '"python"',
              '"code"', '"print(1)"', "\\", '"', "1e999", "9" * 50, "null", "\n", " ", "\u2063", "\ud800"]
    valid = '<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>'
    outcomes = {"calls": 0, "error": 0}
    for i in range(3000):
        kind = i % 3
        if kind == 0:  # random pieces
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
        elif kind == 1:  # a valid call, cut and spliced
            a, b = sorted(rng.randint(0, len(valid)) for _ in range(2))
            text = valid[:a] + rng.choice(pieces) + valid[b:]
        else:  # deep or wide nesting in the arguments
            depth = rng.choice([rng.randint(1, 40), rng.randint(1, 3000)])
            text = '<tool_call>{"name": "a", "arguments": ' + '{"k": ' * depth + "1" + "}" * depth + "}</tool_call>"
        parsed = parse_tool_calls(text, max_calls=rng.randint(1, 3))
        # A call, an error, or (no <tool_call> at all) a plain message.
        assert bool(parsed.calls) + (parsed.error is not None) + ("<tool_call>" not in text) >= 1
        assert not (parsed.calls and parsed.error)
        for call in parsed.calls:
            json.dumps(call.arguments)  # what the executor will receive is plain JSON
        outcomes["calls" if parsed.calls else "error"] += 1
    assert outcomes["calls"] > 100 and outcomes["error"] > 100
