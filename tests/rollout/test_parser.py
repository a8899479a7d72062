import re

import pytest

from orchestra_rl.rollout.parser import parse_tool_calls, tool_call_regex


def test_one_valid_call():
    parsed = parse_tool_calls('thinking...<tool_call>\n{"name": "search", "arguments": {"query": "pop"}}\n</tool_call>')
    assert parsed.error is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [("search", {"query": "pop"})]


def test_arguments_as_json_string_are_accepted():
    parsed = parse_tool_calls('<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>')
    assert parsed.calls[0].arguments == {"code": "print(1)"}


@pytest.mark.parametrize("text, message", [
    ("I think the answer is 4.", "no tool call found"),
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
