"""`orchestra-rl data synthesize`: the stages (toolscale/stages.py) over every domain, each item a Ray task,
then the execution filter (replay.py) per domain, and the output: one domain folder per domain in the format the
environment role loads (envs/domain_files.py, with a code toolkit), the tasks as a `datasets`-loadable dataset, and
a dataset card with the yield of every stage, the reasons items were dropped and the dollars spent."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from orchestra_rl.config import Config, SynthConfig
from orchestra_rl.config.validate import check_synth_endpoint
from orchestra_rl.toolscale import stages
from orchestra_rl.toolscale.llm import Spend, SynthLLM
from orchestra_rl.toolscale.replay import Filtered, replay_filter
from orchestra_rl.toolscale.stages import DomainDraft, StageResult, TaskDraft
from orchestra_rl.envs.domain_files import Domain
from orchestra_rl.envs.toolkit import toolkit_limits
from orchestra_rl.tools.sandbox import SandboxLimits, check_sandbox

CARD = "card.json"
CPUS_PER_ITEM = 0.25  # an item's Ray task mostly waits on the model: several share a core


@ray.remote
def _stage_task(stage: str, cfg: SynthConfig, item: Any, limits: SandboxLimits) -> StageResult:
    async def run() -> StageResult:
        llm = SynthLLM(cfg.llm, cfg.max_tokens, cfg.seed, cfg.cache_dir)
        try:
            return await getattr(stages, stage)(llm, cfg, item, limits)
        finally:
            await llm.close()

    return asyncio.run(run())


@ray.remote
def _filter_task(draft: DomainDraft, tasks: list[TaskDraft], limits: SandboxLimits, near_duplicate: float
                 ) -> Filtered:
    return asyncio.run(replay_filter(draft, tasks, limits, near_duplicate))


def _gather(refs: list[ray.ObjectRef], desc: str) -> list[Any]:
    """The results in order, with a progress bar of their completion."""
    with tqdm(total=len(refs), desc=desc, unit="item") as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)


@dataclass
class StageYield:
    items_in: int = 0
    items_out: int = 0
    attempts: int = 0
    failed_answers: Counter = field(default_factory=Counter)  # answers refused (then retried or dropped), by kind
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # a reason's first dropped item, with the cause
    spend: Spend = field(default_factory=Spend)


class Synthesis:
    def __init__(self, cfg: Config):
        self.cfg = cfg.synth
        self.limits = toolkit_limits(cfg.tools)
        self.yields: dict[str, StageYield] = {}

    def stage(self, name: str, items: list[Any], label=lambda item: "") -> list[Any]:
        """Run stage `name` on every item as a Ray task: the items it produced, in order; the drops counted."""
        refs = [_stage_task.options(num_cpus=CPUS_PER_ITEM).remote(name, self.cfg, item, self.limits)
                for item in items]
        y = self.yields.setdefault(name, StageYield())
        out: list[Any] = []
        for item, result in zip(items, _gather(refs, name)):
            y.items_in += 1
            y.attempts += result.asked.attempts
            y.failed_answers.update(result.asked.failures)
            y.spend.add(result.asked.spend)
            out += result.items
            if result.drop:
                y.dropped[result.drop] += 1
                y.examples.setdefault(result.drop, f"{label(item)}: {result.asked.detail}".lstrip(": "))
        y.items_out += len(out)
        return out

    def run(self) -> tuple[list[DomainDraft], dict[str, list[TaskDraft]]]:
        drafts = self.stage("ideas", [None])
        for name in ("schema", "database", "toolkit", "intents"):
            drafts = self.stage(name, drafts, lambda d: d.name)
        by_name = {d.name: d for d in drafts}
        base = self.stage("tasks", [(d, i) for d in drafts for i in range(len(d.intents))],
                          lambda item: f"{item[0].name}/intent {item[1]}")
        evolved = self.stage("evolve", [(by_name[t.domain], t) for t in base],
                             lambda item: f"{item[1].domain}/{item[1].id}") if self.cfg.evolve else []
        per_domain = {d.name: [t for t in base + evolved if t.domain == d.name] for d in drafts}
        refs = [_filter_task.options(num_cpus=CPUS_PER_ITEM).remote(
            by_name[name], tasks, self.limits, self.cfg.near_duplicate) for name, tasks in per_domain.items()]
        y = self.yields["filter"] = StageYield()
        kept: dict[str, list[TaskDraft]] = {}
        for name, filtered in zip(per_domain, _gather(refs, "filter")):
            y.items_in += len(per_domain[name])
            y.items_out += len(filtered.kept)
            y.dropped.update(filtered.dropped)
            for reason, example in filtered.examples.items():
                y.examples.setdefault(reason, example)
            if filtered.kept:
                kept[name] = filtered.kept
        return [d for d in drafts if d.name in kept], kept


def _splits(tasks: list[TaskDraft], test_fraction: float, rng: random.Random) -> dict[str, str]:
    """task id -> split; a task and its evolved variant always share one (no variant of a test task in train)."""
    groups = sorted({t.id.removesuffix("_evolved") for t in tasks})
    rng.shuffle(groups)
    test = set(groups[:round(len(groups) * test_fraction)])
    return {t.id: "test" if t.id.removesuffix("_evolved") in test else "train" for t in tasks}


def write_domain_folder(draft: DomainDraft, tasks: list[TaskDraft], splits: dict[str, str], folder: Path) -> None:
    folder.mkdir(parents=True)
    files = {"domain.json": {"name": draft.name, "entities": draft.entities}, "db.json": draft.db,
             "tools.json": draft.tools,
             "tasks.json": [{"id": t.id, "split": splits[t.id], "difficulty": t.difficulty, **t.task} for t in tasks]}
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=1) + "\n")
    (folder / "tools.py").write_text(draft.code)
    (folder / "policy.md").write_text(draft.policy.strip() + "\n")


def _rows(domain: Domain) -> list[dict[str, Any]]:
    return [{"domain": domain.name, "id": t.id, "split": t.split, "difficulty": t.difficulty,
             **t.user.model_dump(), "actions": json.dumps([a.model_dump() for a in t.actions]),
             "communicate_info": list(t.communicate_info), "reward_basis": list(t.reward_basis)}
            for t in domain.tasks]


CARD_HEADER = """---
configs:
- config_name: default
  data_files:
{files}
---
"""


def write_card(out: Path, card: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """card.json, data/<split>.jsonl (`datasets.load_dataset(out)` reads them) and README.md, the dataset card."""
    (out / "data").mkdir()
    splits = sorted({r["split"] for r in rows})
    for split in splits:
        with (out / "data" / f"{split}.jsonl").open("w") as f:
            for row in rows:
                if row["split"] == split:
                    f.write(json.dumps(row) + "\n")
    (out / CARD).write_text(json.dumps(card, indent=1) + "\n")
    files = "\n".join(f"  - split: {s}\n    path: data/{s}.jsonl" for s in splits)
    lines = [CARD_HEADER.format(files=files), f"# ToolScale synthesis: {len(card['domains'])} domain(s)\n",
             f"Model `{card['model']}`, seed {card['seed']}; ${card['cost_usd']['total']:.4f} in all "
             f"(${card['cost_usd']['this_run']:.4f} paid by the run that wrote this; the rest from the cache).\n",
             "| domain | tools | records | base tasks | evolved | train | test |", "|---|---|---|---|---|---|---|"]
    for name, d in card["domains"].items():
        lines.append(f"| {name} | {d['tools']} | {d['records']} | {d['base']} | {d['evolved']} | {d['train']} | "
                     f"{d['test']} |")
    lines += ["", "| stage | in | out | attempts | dropped (reason: count) |", "|---|---|---|---|---|"]
    for name, s in card["stages"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(s["dropped"].items())) or "-"
        lines.append(f"| {name} | {s['in']} | {s['out']} | {s['attempts']} | {dropped} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def synthesize(cfg: Config) -> Path:
    """Run the pipeline, write its output to synth.output_dir (replacing an earlier synthesis there) and return
    that folder."""
    check_synth_endpoint(cfg)
    out = Path(cfg.synth.output_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not (out / CARD).is_file():
        raise FileExistsError(f"synth.output_dir={out} holds files that are not a synthesis output; choose another")
    synthesis = Synthesis(cfg)
    check_sandbox(synthesis.limits.mode)  # every generated tool runs in it: say what is missing before paying
    drafts, kept = synthesis.run()
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows, domains = [], {}
    for draft in drafts:
        tasks = kept[draft.name]
        splits = _splits(tasks, cfg.synth.test_fraction, random.Random(f"{cfg.synth.seed}:{draft.name}"))
        write_domain_folder(draft, tasks, splits, tmp / draft.name)
        domain = Domain(tmp / draft.name)  # what the environment role will load: checked here, not at train time
        rows += _rows(domain)
        count = Counter(t.difficulty for t in domain.tasks) + Counter(t.split for t in domain.tasks)
        domains[draft.name] = {"tools": len(draft.tools), "records": sum(map(len, draft.db.values())),
                               "base": count["base"], "evolved": count["evolved"], "train": count["train"],
                               "test": count["test"]}
    total = Spend()
    for y in synthesis.yields.values():
        total.add(y.spend)
    card = {"model": cfg.synth.llm.model, "seed": cfg.synth.seed, "domains": domains,
            "stages": {name: {"in": y.items_in, "out": y.items_out, "attempts": y.attempts,
                              "failed_answers": dict(y.failed_answers), "dropped": dict(y.dropped),
                              "examples": y.examples, "calls": asdict(y.spend)}
                       for name, y in synthesis.yields.items()},
            "calls": asdict(total),
            "cost_usd": {"this_run": round(total.cost_usd, 6),
                         "total": round(total.cost_usd + total.cached_cost_usd, 6)}}
    write_card(tmp, card, rows)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def print_summary(out: Path) -> None:
    card = json.loads((out / CARD).read_text())
    print((out / "README.md").read_text().split("---\n", 2)[-1])
    calls = card["calls"]
    print(f"calls: {calls['paid']} paid, {calls['cached']} from the cache, {calls['failed']} failed; "
          f"written to {out}")
    print(f"train on it: orchestra-rl train env=orders env.orders.path={out}/<domain>")

