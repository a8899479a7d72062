"""Which tools solve each task family of toolscale-mini, at what expected outcome, dollar cost and latency.

The world is built so that the right strategy is known: arithmetic -> python, lookup -> search, multihop ->
search, search, python, hard -> the large generalist. This module derives each strategy's expectations from the
config (tool prices, expert accuracies, latencies), so what an orchestrator *should* learn under a given reward
weighting is visible before a training run: the best strategy maximises the absolute reward
E[R] = E[o] - cost_weight * E[C] - latency_weight * E[L].

The orchestrator's own tokens and its final `answer` call cost about the same under every strategy and are left
out.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchestra_rl.config import Config
from orchestra_rl.tools.base import Pricing

# Local strategies, by tool kind. Used correctly they are always right (python evaluates the expression, search
# returns the passage with the fact), except on hard tasks: hidden facts are in no document.
LOCAL_STRATEGIES = {
    "arithmetic": (("python",), 1.0),
    "lookup": (("search",), 1.0),
    "multihop": (("search", "search", "python"), 1.0),
    "hard": (("search",), 0.0),
}
# Typical wall time of one local call: starting a sandboxed interpreter; an in-memory BM25 query.
LOCAL_LATENCY_S = {"python": 0.05, "search": 0.01}
# Prompt tokens of one expert call: the task's question (~50 characters in toolscale-mini) plus a little context,
# at ~4 characters a token, as the simulated experts count usage. Output tokens dominate an expert's price anyway.
EXPERT_PROMPT_TOKENS = 20


@dataclass(frozen=True)
class StrategyOutcome:
    family: str
    tools: tuple[str, ...]  # tool names, in calling order
    accuracy: float  # E[o]
    cost_usd: float  # E[C]
    latency_s: float  # E[L]

    def expected_reward(self, cost_weight: float, latency_weight: float = 0.0) -> float:
        return self.accuracy - cost_weight * self.cost_usd - latency_weight * self.latency_s


def expected_outcomes(cfg: Config) -> list[StrategyOutcome]:
    """Every strategy for every configured family: the family's local one (when its tools are enabled) and one
    call to each enabled simulated expert."""
    tools = {name: t for name, t in cfg.tools.tools.items() if t.enabled}
    by_kind: dict[str, str] = {}
    for name, t in tools.items():
        by_kind.setdefault(t.kind, name)  # the first tool of each kind plays the local role
    experts = {name: t for name, t in tools.items()
               if t.kind == "llm" and t.base_url == "experts" and t.model in cfg.data.experts}

    rows = []
    for family in cfg.data.families:
        kinds, accuracy = LOCAL_STRATEGIES[family]
        if all(k in by_kind for k in kinds):
            rows.append(StrategyOutcome(
                family, tuple(by_kind[k] for k in kinds), accuracy,
                cost_usd=sum(tools[by_kind[k]].price_per_call for k in kinds),
                latency_s=sum(LOCAL_LATENCY_S[k] for k in kinds)))
        for name, t in experts.items():
            expert = cfg.data.experts[t.model]
            pricing = Pricing(t.price_in_per_mtok or 0.0, t.price_out_per_mtok or 0.0, t.price_per_call)
            rows.append(StrategyOutcome(
                family, (name,), expert.accuracy.get(family, 0.0),
                cost_usd=pricing.cost(EXPERT_PROMPT_TOKENS, expert.output_tokens),
                # the latency the orchestrator will observe: simulated latencies are scaled by serve.latency_scale
                latency_s=expert.latency_mean_s * cfg.serve.latency_scale))
    return rows


def best_strategy(cfg: Config, family: str, cost_weight: float, latency_weight: float = 0.0) -> StrategyOutcome:
    """The strategy with the highest expected absolute reward; ties go to the cheaper, then the faster one."""
    candidates = [s for s in expected_outcomes(cfg) if s.family == family]
    if not candidates:
        raise ValueError(f"no strategy for family {family!r} (configured: {', '.join(cfg.data.families)})")
    return min(candidates, key=lambda s: (-s.expected_reward(cost_weight, latency_weight), s.cost_usd, s.latency_s))


def print_strategy_table(cfg: Config, cost_weight: float = 0.0, latency_weight: float = 0.0,
                         console: Console | None = None) -> None:
    """The strategies of every family with their expectations; the best under the given weights is starred."""
    table = Table(title=f"Expected outcome per strategy (R = o - {cost_weight:g}*C - {latency_weight:g}*L)")
    # o: outcome (P(correct)), C: dollar cost, L: latency in seconds, R: the absolute reward
    for column in ("family", "strategy", "E[o]", "E[C] $", "E[L] s", "E[R]", "best"):
        table.add_column(escape(column), justify="left" if column in ("family", "strategy") else "right")
    for family in cfg.data.families:
        best = best_strategy(cfg, family, cost_weight, latency_weight)
        for s in (s for s in expected_outcomes(cfg) if s.family == family):
            table.add_row(family, " -> ".join(s.tools), f"{s.accuracy:.2f}", f"{s.cost_usd:.6f}",
                          f"{s.latency_s:.2f}", f"{s.expected_reward(cost_weight, latency_weight):.4f}",
                          "*" if s == best else "")
        table.add_section()
    (console or Console()).print(table)
