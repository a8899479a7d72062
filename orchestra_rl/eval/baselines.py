"""Fixed baselines an orchestrator is compared with (the paper's question: is routing worth it?).

A baseline is the scripted policy (sft/scripted.py) with a fixed strategy table, run through the same agent loop,
tool executors and experts as a trained policy, on the same tasks and seeds:

    only:<tool>  that tool alone on every task ("only:large_generalist" is "always ask the large generalist")
    only:priciest, only:cheapest   the model tool (kind llm) with the highest / lowest price, alone: "always ask
                 the biggest model" and "always ask the cheapest one" under any tool set (none without models)
    random       one tool drawn per trajectory (seeded by task and trial), then the answer: a random router
    best         each family's most accurate strategy (ties to the cheaper), which the world knows by design

A baseline reads a tool's response as the demonstrations do (an expert's stated answer, the python output, the
fact in a search passage): an oracle reader, so it measures the routing, not the reading. Where a tool cannot
help on a task it is called all the same (python on a question without arithmetic prints the question) and its
output is the (wrong) answer. Baselines are rule-based routers, not models: their own tokens cost nothing. They
know the QA world's families only.
"""

from __future__ import annotations

import copy

from orchestra_rl.config import Config
from orchestra_rl.data.strategies import best_strategy
from orchestra_rl.types import Task, Trajectory

CALLABLE_KINDS = ("python", "search", "llm")


def _models_by_price(cfg: Config) -> list[str]:
    """The enabled model tools, cheapest first (by output, then input token price; ties in config order)."""
    models = [(n, t) for n, t in cfg.tools.tools.items() if t.enabled and t.kind == "llm"]
    return [n for n, t in sorted(models, key=lambda m: (m[1].price_out_per_mtok, m[1].price_in_per_mtok))]


def expand_baselines(cfg: Config, names: list[str]) -> list[str]:
    """`only:*` becomes one `only:<tool>` per callable tool, in config order, and only:priciest / only:cheapest the
    `only:<tool>` of that model (nothing when no model tool is enabled); duplicates dropped."""
    tools = [n for n, t in cfg.tools.tools.items() if t.enabled and t.kind in CALLABLE_KINDS]
    models = _models_by_price(cfg)  # none enabled: the two model aliases name no baseline
    aliases = {"only:*": [f"only:{t}" for t in tools], "only:priciest": [f"only:{m}" for m in models[-1:]],
               "only:cheapest": [f"only:{m}" for m in models[:1]]}
    return list(dict.fromkeys(x for name in names for x in aliases.get(name, [name])))


def baseline_strategies(cfg: Config, name: str) -> dict[str, list[tuple[str, ...]]]:
    """Per family, the tool sequences the baseline `name` (validated) picks from."""
    tools = [n for n, t in cfg.tools.tools.items() if t.enabled and t.kind in CALLABLE_KINDS]
    families = cfg.data.families
    if name.startswith("only:"):
        return {f: [(name.removeprefix("only:"),)] for f in families}
    if name == "random":
        return {f: [(t,) for t in tools] for f in families}
    if name == "best":
        return {f: [best_strategy(cfg, f, cost_weight=0.0).tools] for f in families}
    raise ValueError(f"unknown baseline {name!r}")


def run_baseline(cfg: Config, system, tasks: list[Task], name: str, group_size: int) -> list[Trajectory]:
    """`group_size` trials of every task (group index = trial) by the baseline `name`, with `system`'s tools."""
    from orchestra_rl.sft.demos import ScriptedRollout

    unknown = sorted({t.family for t in tasks} - set(cfg.data.families))
    if unknown:
        raise ValueError(f"baseline {name!r} knows the QA world's families only, not {', '.join(unknown)}")
    router = copy.deepcopy(cfg)
    router.model.price_in_per_mtok = router.model.price_out_per_mtok = 0.0  # a rule, not a model: no tokens paid
    scripted = ScriptedRollout(router, system, tasks, baseline_strategies(cfg, name))
    return scripted.run([(task, g) for task in tasks for g in range(group_size)])
