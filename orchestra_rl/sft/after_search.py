"""Does the warm-started policy answer a lookup once its search has returned the fact? A cheap check of the decision
after the first call.

The family probe (sft/probe.py) reads the first call; a lookup is not solved there but one call later, where the
policy has a search's passages in front of it and either answers from them or calls another tool. For every lookup
of the world this builds the context a search-first rollout has at that point (the task's prompt, the
demonstrations' first turn: thought with sft.think, then the search for the question; the real BM25 response), and
decodes greedily (a rollout's turn at most): which tool the policy calls next, whether its answer is right as it
stands, and whether it reads the fact right when the answer call is forced (the call's opening written for it).
Multihop questions ask for the same attributes and their best strategy searches again there: beside the lookups,
their next call after their first search, and, as the family probe does at the first call, how far the policy's
state where it names the next tool tells the two families apart. SFT writes it into probe.json ("after_search");
like the family probe it runs on the driver's CPU, for the tiny model.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from orchestra_rl.config import Config
from orchestra_rl.data.reading import find_span, search_query
from orchestra_rl.envs.qa import question_with_preference
from orchestra_rl.reward.outcome import is_correct
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.parser import parse_tool_calls
from orchestra_rl.sft.probe import pct, separability, state_parts, tool_name_states, up_to_tool_name
from orchestra_rl.sft.scripted import format_tool_call, turn_thought
from orchestra_rl.tools.registry import config_schemas
from orchestra_rl.tools.search import SearchTool
from orchestra_rl.types import Task

_ANSWER_MARK = "ANSWERMARK"  # cut a rendered answer call where its answer starts
_THOUGHT = re.compile(r"<think>.*?</think>\n?", re.DOTALL)


def contexts_after_search(cfg: Config, tokenizer: Any, tasks: list[Task], search: SearchTool,
                          search_tool: str) -> list[tuple[list[int], str]]:
    """Per task, (the tokens a search-first rollout holds when its first search's response is in, that response)."""
    chat = ChatFormat(tokenizer, cfg.rollout.system_prompt, config_schemas(cfg.tools))
    out = []
    for task in tasks:
        query = search_query(task, 0)
        first_turn = turn_thought(cfg.sft, task, []) + format_tool_call(search_tool, {"query": query})
        response = search.bm25(query)
        ids = (chat.prompt_ids(question_with_preference(task)) + tokenizer.encode(first_turn, add_special_tokens=False)
               + chat.continuation_ids([response], ended_with_eos=False))
        out.append((ids, response))
    return out


def after_search(cfg: Config, model_path: str, world_dir: str | Path, tasks: list[Task]) -> dict[str, Any] | None:
    """Over the lookups among `tasks`: the share whose fact the response holds, the next tool's counts, the share
    answered right as decoded, and the share read right with the answer call forced; per attribute asked the same.
    Beside it the next tool after a multihop question's first search (the best strategy searches again there), and
    at the next call's tool name a probe of lookup vs multihop with the state's parts and tool probabilities
    ("next_tool_name"). None when the world has no lookup, or the configured tools no local search or no answer tool."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lookups, multihops = ([t for t in tasks if t.family == family] for family in ("lookup", "multihop"))
    search_tool, answer_tool = cfg.tools.enabled_of_kind("search"), cfg.tools.enabled_of_kind("answer")
    if not lookups or search_tool is None or answer_tool is None or cfg.tools.tools[search_tool].backend != "bm25":
        return None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    search = SearchTool(search_tool, cfg.tools.tools[search_tool], world_dir)
    close = tokenizer.encode("</tool_call>", add_special_tokens=False)
    call = format_tool_call(answer_tool, {"answer": _ANSWER_MARK})
    answer_opening = call[:call.index(_ANSWER_MARK)]

    def decode(ids: list[int]) -> str:
        # The attention mask given: inferred, it would mask the context's end-of-turn tokens (pad = eos).
        inputs = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs),
                                 max_new_tokens=cfg.rollout.max_tokens_per_turn, do_sample=False,
                                 eos_token_id=close[-1], pad_token_id=tokenizer.eos_token_id)
        return tokenizer.decode(out[0, len(ids):], skip_special_tokens=False)

    def first_call(text: str) -> tuple[str, str | None]:
        """(the tool called, or "none"; the answer if it is the answer tool)"""
        calls = parse_tool_calls(text).calls
        if not calls:
            return "none", None
        return calls[0].name, str(calls[0].arguments.get("answer")) if calls[0].name == answer_tool else None

    lookup_contexts = contexts_after_search(cfg, tokenizer, lookups, search, search_tool)
    multihop_contexts = contexts_after_search(cfg, tokenizer, multihops, search, search_tool)
    # The next turn as decoded; the forced answer and the probe below keep the policy's own thought from it, so a
    # thought that records what was read (sft.think_progress) is the policy's reading, not the demonstrator's.
    lookup_turns = [decode(ids) for ids, _ in lookup_contexts]
    multihop_turns = [decode(ids) for ids, _ in multihop_contexts]
    rows = defaultdict(list)  # attribute -> (fact in response, next tool, right as is, right forced)
    for task, (ids, response), turn in zip(lookups, lookup_contexts, lookup_turns):
        next_tool, answered = first_call(turn)
        opening = own_thought(turn) + answer_opening
        _, forced = first_call(opening + decode(ids + tokenizer.encode(opening, add_special_tokens=False)))
        rows[task.metadata.get("attributes", ["?"])[0]].append((
            find_span(response, task.answer) is not None, next_tool,
            is_correct(answered, task.answer, task.family), is_correct(forced, task.answer, task.family)))
    multihop_next = Counter(first_call(turn)[0] for turn in multihop_turns)

    # Where the next call names its tool: RL can answer lookups and search again for multihop questions only as far
    # as the policy's state there tells the two apart (the family probe's reading, sft/probe.py).
    both = lookups + multihops
    prompts = [ids + tokenizer.encode(own_thought(turn) + up_to_tool_name(), add_special_tokens=False)
               for (ids, _), turn in zip(lookup_contexts + multihop_contexts, lookup_turns + multihop_turns)]
    states, probs, tools = tool_name_states(cfg, model, tokenizer, prompts)
    families = [task.family for task in both]
    next_name = {"lookup/multihop": separability(states, families), "state": state_parts(states, families),
                 "tool": {f: {tool: round(float(p), 4) for tool, p in
                              zip(tools, probs[[i for i, g in enumerate(families) if g == f]].mean(0))}
                          for f in ("lookup", "multihop") if f in families}}
    return {"tasks": len(lookups), **summary([r for rs in rows.values() for r in rs]),
            "by_attribute": {a: summary(rs) for a, rs in sorted(rows.items())},
            "multihop": {"tasks": len(multihops), "next_tool": dict(multihop_next.most_common())},
            "next_tool_name": next_name}


def own_thought(turn: str) -> str:
    """The thought a decoded turn opens with (<think>...</think> and its newline), or nothing."""
    m = _THOUGHT.match(turn)
    return m.group() if m else ""


def summary(rows: list[tuple[bool, str, bool, bool]]) -> dict[str, Any]:
    n = len(rows)
    return {"fact_in_response": sum(r[0] for r in rows) / n,
            "next_tool": dict(Counter(r[1] for r in rows).most_common()),
            "right_as_is": sum(r[2] for r in rows) / n, "right_forced": sum(r[3] for r in rows) / n}


def describe(found: dict[str, Any]) -> str:
    """One line for the console."""
    def counts(next_tool: dict[str, int]) -> str:
        return ", ".join(f"{tool} {count}" for tool, count in next_tool.items()) or "-"

    return (f"after a lookup's search ({found['tasks']} lookups, the fact in {found['fact_in_response']:.2f} of the "
            f"responses): next call {counts(found['next_tool'])}; right as decoded {found['right_as_is']:.2f}, with "
            f"the answer call forced {found['right_forced']:.2f}; after a multihop question's first search: next call "
            f"{counts(found['multihop']['next_tool'])}; at the next tool's name a probe tells lookups from multihop "
            f"questions {pct(found['next_tool_name']['lookup/multihop'])}")
