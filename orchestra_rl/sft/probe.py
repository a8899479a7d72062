"""Does the warm-started policy tell the task families apart where it chooses its first tool? A cheap check before RL.

RL can route a family to its best tool only as far as the policy's state at the first tool name differs between
families: GRPO's gradient for that token moves every state near the rewarded one. For every QA task this reads the
policy's last hidden state at the position where its first call names a tool (the task's exact prompt, then
`<tool_call>\n{"name": "`), and fits a linear probe (logistic regression, 5-fold cross-validated) of the family on
it, for all families and for every pair; it records how much of that state is the family's own (`state_parts`)
and the policy's own first-tool distribution per family there (its routing before RL, without sampling). SFT writes
it beside its checkpoint (probe.json): a pair the probe confuses (hard questions vs lookups, whose questions differ
only in the attribute asked) is a pair RL will route alike. It runs on the driver's CPU, for a policy whose tool
names are single tokens (model.word_tokens: the tiny model); a large model's SFT skips it.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Any

from orchestra_rl.config import Config
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.sft.scripted import format_tool_call, turn_thought
from orchestra_rl.tools.registry import config_schemas
from orchestra_rl.types import Task

_NAME_MARK = "TOOLNAME"  # cut a rendered call at its tool name
FOLDS = 5


def separability(states: Any, labels: list[str], folds: int = FOLDS) -> float | None:
    """Cross-validated accuracy of a logistic-regression probe of `labels` from `states` (n x d); None when a
    label has fewer than `folds` examples (no stratified fold could hold it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < folds:
        return None
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return float(cross_val_score(LogisticRegression(max_iter=2000), states, labels, cv=cv).mean())


def state_parts(states: Any, labels: list[str]) -> dict[str, float]:
    """How much of the state is shared and how much is the family's: the norm of the mean state over all tasks
    ("common"), the mean distance of a family's mean from it ("family"), and the mean distance of a task's state
    from its family's mean ("spread"). GRPO's update of a tool's logit moves it for a state in proportion to that
    state's product with the rewarded ones, so where "family" is small against "common", a tool rewarded in one
    family gains in every family."""
    import numpy as np

    labels_ = np.array(labels)
    common = states.mean(0)
    means = {f: states[labels_ == f].mean(0) for f in sorted(set(labels))}
    return {"common": float(np.linalg.norm(common)),
            "family": float(np.mean([np.linalg.norm(m - common) for m in means.values()])),
            "spread": float(np.mean([np.linalg.norm(states[labels_ == f] - m, axis=1).mean()
                                     for f, m in means.items()]))}


def prompts_to_first_tool_name(cfg: Config, tokenizer: Any, tasks: list[Task]) -> list[list[int]]:
    """Each task's prompt as a rollout renders it, then the policy's first turn up to the tool name as the
    demonstrations write it (ToolCall.render, after their thought with sft.think)."""
    from orchestra_rl.envs.qa import question_with_preference

    chat = ChatFormat(tokenizer, cfg.rollout.system_prompt, config_schemas(cfg.tools))
    return [chat.prompt_ids(question_with_preference(task))
            + tokenizer.encode(turn_thought(cfg.sft, task, []) + up_to_tool_name(), add_special_tokens=False)
            for task in tasks]


def up_to_tool_name() -> str:
    """A tool call as the demonstrations write it (ToolCall.render), cut where the tool's name starts."""
    call = format_tool_call(_NAME_MARK, {})
    return call[:call.index(_NAME_MARK)]


def first_tool_states(cfg: Config, model_path: str, tasks: list[Task]) -> tuple[Any, Any, list[str]]:
    """(states n x hidden, tool probabilities n x tools, the tool words) at each task's first tool-name position."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    return tool_name_states(cfg, model, tokenizer, prompts_to_first_tool_name(cfg, tokenizer, tasks))


def tool_name_states(cfg: Config, model: Any, tokenizer: Any, prompts: list[list[int]]) -> tuple[Any, Any, list[str]]:
    """(states n x hidden, tool probabilities n x tools, the tool words) at the end of each prompt: where the
    policy writes a tool's name."""
    import numpy as np
    import torch

    # The enabled tools whose names are single tokens (model.word_tokens): their probability is the name's.
    tools = [name for name, tool in cfg.tools.tools.items() if tool.enabled and name in cfg.model.word_tokens]
    tool_ids = tokenizer.convert_tokens_to_ids(tools)
    states, probs = [], []
    with torch.no_grad():
        for ids in prompts:
            out = model(torch.tensor([ids]), output_hidden_states=True)
            states.append(out.hidden_states[-1][0, -1].float().numpy())
            probs.append(torch.softmax(out.logits[0, -1].float(), -1)[tool_ids].numpy())
    return np.stack(states), np.stack(probs), tools


def family_probe(cfg: Config, model_path: str, tasks: list[Task]) -> dict[str, Any]:
    """The probe's accuracy over all families and per pair (with chance: the largest family's share), and the
    policy's mean first-tool probability per family."""
    states, probs, tools = first_tool_states(cfg, model_path, tasks)
    families = [t.family for t in tasks]
    names = sorted(set(families))
    counts = Counter(families)
    pairs = {}
    for a, b in combinations(names, 2):
        keep = [i for i, f in enumerate(families) if f in (a, b)]
        pairs[f"{a}/{b}"] = separability(states[keep], [families[i] for i in keep])
    first_tool = {f: {tool: round(float(p), 4) for tool, p in
                      zip(tools, probs[[i for i, g in enumerate(families) if g == f]].mean(0))} for f in names}
    return {"tasks": len(tasks), "families": dict(sorted(counts.items())),
            "accuracy": separability(states, families), "chance": max(counts.values()) / len(tasks),
            "pairs": pairs, "state": state_parts(states, families), "first_tool": first_tool}


def pct(v: float | None) -> str:
    """A share for the console; n/a where the probe had too few examples."""
    return "n/a" if v is None else f"{v:.2f}"


def describe(probe: dict[str, Any]) -> str:
    """One line per finding, for the console."""
    pairs = ", ".join(f"{pair} {pct(v)}" for pair, v in probe["pairs"].items())
    parts = probe["state"]
    routes = "; ".join(f"{f} " + " ".join(f"{t} {p:.2f}" for t, p in sorted(mix.items(), key=lambda kv: -kv[1])[:2])
                       for f, mix in probe["first_tool"].items())
    return (f"family probe at the first tool name ({probe['tasks']} tasks, {FOLDS}-fold): all families "
            f"{pct(probe['accuracy'])} (chance {probe['chance']:.2f}); pairs: {pairs}\n"
            f"state there: shared part {parts['common']:.2f}, a family's own part {parts['family']:.2f}, spread within "
            f"a family {parts['spread']:.2f}\n"
            f"first tool, mean probability (top two): {routes}")
