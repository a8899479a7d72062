"""The built-in task world "toolscale-mini": fictional entities, a corpus about them, and verifiable tasks.

The facts are invented (syllable names, random numbers), so no model can know them: a lookup has to go through
the search tool, arithmetic is exact only with python, and the hidden facts (never written into the corpus) are
known only to the simulated experts, which read them from world.json. Every part is drawn from its own seeded
RNG stream, so the same DataConfig always builds byte-identical files.

A built world folder holds:
  corpus.jsonl              {doc_id, title, text}: what the search tool indexes
  train.jsonl, test.jsonl   orchestra_rl.types.Task rows, loadable with HF `datasets`
  world.json                every entity with all its facts, hidden ones included (for the experts)
  manifest.json             the generation config, counts, and the sha256 of every other file

Split sizes: `tasks_per_family` is the number of tasks of each family in the whole world; each family puts
round(tasks_per_family * test_fraction) of them in test and the rest in train. Questions are unique across both
splits, so no test question is ever trained on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestra_rl.config import ConfigError, DataConfig
from orchestra_rl.types import Task

WORLD_VERSION = 1  # bump when generation changes, so cached worlds of the old generator are not reused

# (weights, text) shown to the orchestrator. Keys are tool names of conf/tools/default.yaml, or cost/latency.
PREFERENCE_PRESETS: list[tuple[dict[str, float], str]] = [
    ({}, ""),
    ({"large_generalist": -1.0}, "Avoid the large generalist model."),
    ({"python": 0.5, "search": 0.5}, "Prefer local tools."),
    ({"cost": 1.0}, "Keep the cost as low as possible."),
]

# One question template per (entity kind, fact): task sampling and the experts' question index both use these.
LOOKUP_QUESTIONS = {
    ("countries", "population"): "What is the population of {name}?",
    ("countries", "area_km2"): "What is the area of {name} in square kilometres?",
    ("countries", "founded"): "In what year was {name} founded?",
    ("countries", "capital"): "What is the capital of {name}?",
    ("companies", "revenue_musd"): "What is the annual revenue of {name} in millions of US dollars?",
    ("companies", "employees"): "How many employees does {name} have?",
    ("companies", "founded"): "In what year was {name} founded?",
    ("companies", "hq_country"): "In which country is {name} headquartered?",
    ("people", "birth_year"): "In what year was {name} born?",
    ("people", "height_cm"): "How tall is {name} in centimetres?",
    ("people", "employer"): "Which company does {name} work for?",
}
# Facts stored under each entity's "hidden" key and never written into the corpus.
HIDDEN_QUESTIONS = {
    ("countries", "gold_reserve_tonnes"): "What is the classified gold reserve of {name} in tonnes?",
    ("countries", "cipher_word"): "What is the diplomatic cipher word of {name}?",
    ("companies", "codename"): "What is the internal project codename of {name}?",
    ("companies", "secret_patents"): "How many undisclosed patents does {name} hold?",
    ("people", "clearance_number"): "What is the security clearance number of {name}?",
    ("people", "passphrase"): "What is the secret passphrase of {name}?",
}


_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t",
           "th", "v", "z", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ia", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "k", "m", "x"]
_COUNTRY_ENDINGS = ["ia", "land", "mark", "stan", "ora", "heim"]
_COMPANY_SUFFIXES = ["Industries", "Systems", "Labs", "Holdings", "Dynamics", "Works"]


# ---------------------------------------------------------------- arithmetic


_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# Bounds that keep a hostile expression (`9 ** 9 ** 9`, `1e999`) from hanging the process or overflowing.
_MAX_EXPONENT = 64
_MAX_MAGNITUDE = 10 ** 100


def evaluate_arithmetic(expression: str) -> int | float:
    """Value of a plain arithmetic expression (numbers, + - * / // % **, parentheses). Never runs code:
    the expression is parsed with `ast` and only those nodes are evaluated. Raises ValueError otherwise."""
    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            result = node.value
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            result = _UNARY_OPS[type(node.op)](value(node.operand))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ValueError(f"exponent {right} too large")
            result = _BINARY_OPS[type(node.op)](left, right)
        else:
            raise ValueError(f"not a plain arithmetic expression: {ast.unparse(node)!r}")
        if not abs(result) <= _MAX_MAGNITUDE:  # also rejects inf and nan
            raise ValueError(f"{ast.unparse(node)!r} is out of range")
        return result

    try:
        return value(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, ZeroDivisionError, OverflowError) as e:
        raise ValueError(f"cannot evaluate {expression!r}: {e}") from e


# ---------------------------------------------------------------- entities


class InventedNames:
    """Invented words, each used once in the whole world, so a name token points at exactly one entity."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: tuple[int, int] = (2, 3), ending: str = "") -> str:
        while True:
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                        for _ in range(n)) + ending
            if w not in self.used and len(w) > 3:
                self.used.add(w)
                return w.capitalize()


def _entities(cfg: DataConfig) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(f"toolscale-mini/{cfg.seed}/entities")
    names = InventedNames(rng)
    countries = [{"name": names.word((1, 2), ending=rng.choice(_COUNTRY_ENDINGS)),
                  "population": rng.randint(50_000, 60_000_000), "area_km2": rng.randint(800, 1_500_000),
                  "founded": rng.randint(1100, 1990), "capital": names.word()}
                 for _ in range(cfg.num_countries)]
    companies = [{"name": f"{names.word()} {rng.choice(_COMPANY_SUFFIXES)}",
                  "revenue_musd": rng.randint(5, 95_000), "employees": rng.randint(20, 250_000),
                  "founded": rng.randint(1850, 2015), "hq_country": rng.choice(countries)["name"]}
                 for _ in range(cfg.num_companies)]
    people = [{"name": f"{names.word((1, 2))} {names.word()}", "birth_year": rng.randint(1940, 2004),
               "height_cm": rng.randint(150, 205), "employer": rng.choice(companies)["name"]}
              for _ in range(cfg.num_people)]

    # Hidden numbers avoid every number the corpus states, so no passage can reveal one even by coincidence.
    taken = {v for e in countries + companies + people for v in e.values() if isinstance(v, int)}

    def secret_number(low: int, high: int) -> int:
        while (v := rng.randint(low, high)) in taken:
            pass
        taken.add(v)
        return v

    for c in countries:
        c["hidden"] = {"gold_reserve_tonnes": secret_number(10, 9_999), "cipher_word": names.word()}
    for c in companies:
        c["hidden"] = {"codename": names.word(), "secret_patents": secret_number(3, 5_000)}
    for p in people:
        p["hidden"] = {"clearance_number": secret_number(100_000, 999_999), "passphrase": names.word()}
    return {"countries": countries, "companies": companies, "people": people}


def fact_questions(world: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(family, question, answer, metadata) for every fact of every entity: lookup for the corpus facts, hard
    for the hidden ones."""
    out = []
    for family, templates in (("lookup", LOOKUP_QUESTIONS), ("hard", HIDDEN_QUESTIONS)):
        for (kind, attr), template in templates.items():
            for e in world[kind]:
                value = e[attr] if family == "lookup" else e["hidden"][attr]
                out.append((family, template.format(name=e["name"]), str(value),
                            {"entities": [e["name"]], "attributes": [attr]}))
    return out


# ---------------------------------------------------------------- corpus


def _corpus(world: dict[str, list[dict[str, Any]]], seed: int) -> list[dict[str, str]]:
    """Short documents in varied templates. Every corpus fact is stated next to its keyword (population,
    founded, ...) and its entity's name, so a keyword search for a lookup question can find it."""
    rng = random.Random(f"toolscale-mini/{seed}/corpus")

    def num(n: int) -> str:  # numbers are written both ways, as in real text; answers ignore commas
        return f"{n:,}" if rng.random() < 0.5 else str(n)

    docs: list[tuple[str, str]] = []
    for c in world["countries"]:
        n, cap, pop, area, year = c["name"], c["capital"], num(c["population"]), num(c["area_km2"]), c["founded"]
        docs.append((n, rng.choice([
            f"{n} is a country whose capital is {cap}. It was founded in {year}.",
            f"Founded in {year}, {n} has its capital at {cap}.",
            f"The capital of {n} is {cap}; the country was founded in {year}.",
        ])))
        docs.append((f"{n}: population and geography", rng.choice([
            f"{n} has a population of {pop} and an area of {area} square kilometres.",
            f"The population of {n} is {pop}. Its land area is {area} square kilometres (km2).",
            f"{n} covers an area of {area} square kilometres and is home to a population of {pop} people.",
        ])))
        docs.append((cap, f"{cap} is the capital city of {n}, a country founded in {year}."))
    for c in world["companies"]:
        n, hq, year, rev, emp = c["name"], c["hq_country"], c["founded"], num(c["revenue_musd"]), num(c["employees"])
        docs.append((n, rng.choice([
            f"{n} is a company headquartered in {hq}. It was founded in {year}.",
            f"Founded in {year}, {n} is headquartered in {hq}.",
            f"{n}, headquartered in {hq}, was founded in {year}.",
        ])))
        docs.append((f"{n} annual report", rng.choice([
            f"{n} reported annual revenue of {rev} million US dollars and has {emp} employees.",
            f"In its latest annual report, {n} had {emp} employees and revenue of {rev} million dollars.",
            f"With {emp} employees, {n} earned an annual revenue of {rev} million US dollars.",
        ])))
    for p in world["people"]:
        n, first, emp, year, h = p["name"], p["name"].split()[0], p["employer"], p["birth_year"], p["height_cm"]
        docs.append((n, rng.choice([
            f"{n} was born in {year}. {first} works for {emp} and is {h} centimetres tall.",
            f"Born in {year}, {n} stands {h} centimetres tall and works at {emp}.",
            f"{n} ({h} cm tall, born in {year}) has worked for {emp} for several years.",
        ])))
    # Documents naming several entities: realistic distractors for a keyword search.
    for c in world["countries"]:
        based = [x["name"] for x in world["companies"] if x["hq_country"] == c["name"]]
        if based:
            docs.append((f"Business in {c['name']}", f"Companies headquartered in {c['name']}: {', '.join(based)}."))
    for c in world["companies"]:
        staff = [x["name"] for x in world["people"] if x["employer"] == c["name"]]
        if staff:
            docs.append((f"People of {c['name']}", f"Staff of {c['name']} include {', '.join(staff)}."))
    return [{"doc_id": f"doc-{i:05d}", "title": t, "text": x} for i, (t, x) in enumerate(docs)]


# ---------------------------------------------------------------- tasks


def _arithmetic(rng: random.Random, world: dict) -> tuple[str, str, dict[str, Any]]:
    a, b, c, d = rng.randint(100, 9_999), rng.randint(11, 99), rng.randint(10, 999), rng.randint(2, 9)
    expression = rng.choice([f"{a} * {b} + {c}", f"{a} * {b} - {c}", f"({a} + {c}) * {b}", f"{a} * {b} * {d}",
                             f"{a} - {b} * {c}"])
    return f"What is {expression}?", str(evaluate_arithmetic(expression)), {"expression": expression}


def _multihop(rng: random.Random, world: dict) -> tuple[str, str, dict[str, Any]]:
    """Two corpus facts combined by one operation: two searches, then python."""
    kind = rng.randrange(4)
    if kind == 0:
        x, y = rng.sample(world["countries"], 2)
        q, attrs = f"What is the combined population of {x['name']} and {y['name']}?", ["population"] * 2
        expression = f"{x['population']} + {y['population']}"
    elif kind == 1:
        x, y = rng.sample(world["companies"], 2)
        q, attrs = f"How many employees do {x['name']} and {y['name']} have in total?", ["employees"] * 2
        expression = f"{x['employees']} + {y['employees']}"
    elif kind == 2:
        x, y = sorted(rng.sample(world["countries"], 2), key=lambda e: -e["area_km2"])
        q, attrs = f"How many square kilometres larger is {x['name']} than {y['name']}?", ["area_km2"] * 2
        expression = f"{x['area_km2']} - {y['area_km2']}"
    else:
        # A company's founding and a person's birth, the earlier event first so the answer is not negative.
        x, y = rng.choice(world["companies"]), rng.choice(world["people"])
        x, y, attrs = (x, y, ["founded", "birth_year"]) if x["founded"] <= y["birth_year"] else \
            (y, x, ["birth_year", "founded"])
        verb = {"founded": "founded", "birth_year": "born"}
        q = f"How many years after {x['name']} was {verb[attrs[0]]} was {y['name']} {verb[attrs[1]]}?"
        expression = f"{y[attrs[1]]} - {x[attrs[0]]}"
    meta = {"entities": [x["name"], y["name"]], "attributes": attrs, "expression": expression}
    return q, str(evaluate_arithmetic(expression)), meta


_GENERATED = {"arithmetic": _arithmetic, "multihop": _multihop}


def _family_tasks(family: str, n: int, world: dict, seed: int) -> list[tuple[str, str, dict[str, Any]]]:
    """n distinct (question, answer, metadata) of one family."""
    rng = random.Random(f"toolscale-mini/{seed}/tasks/{family}")
    if family in ("lookup", "hard"):
        pool = [(q, a, meta) for f, q, a, meta in fact_questions(world) if f == family]
        if n > len(pool):
            raise ConfigError("data.tasks_per_family", f"{n} exceeds the {len(pool)} distinct {family} questions "
                              "of this world; raise data.num_countries/num_companies/num_people")
        return rng.sample(pool, n)
    tasks: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for _ in range(50 * n):  # duplicates are rare; the bound only guards against an impossible request
        if len(tasks) == n:
            break
        q, a, meta = _GENERATED[family](rng, world)
        tasks.setdefault(q, (q, a, meta))
    if len(tasks) < n:
        raise ConfigError("data.tasks_per_family", f"could not draw {n} distinct {family} questions")
    return list(tasks.values())


def _splits(cfg: DataConfig, world: dict) -> dict[str, list[Task]]:
    splits: dict[str, list[Task]] = {"train": [], "test": []}
    n_test = round(cfg.tasks_per_family * cfg.test_fraction)
    for family in cfg.families:
        rng = random.Random(f"toolscale-mini/{cfg.seed}/preferences/{family}")
        for i, (question, answer, meta) in enumerate(_family_tasks(family, cfg.tasks_per_family, world, cfg.seed)):
            preference, text = rng.choice(PREFERENCE_PRESETS)
            task = Task(task_id=f"{family}-{i:04d}", family=family, question=question, answer=answer,
                        preference=dict(preference), preference_text=text, metadata=meta)
            splits["test" if i < n_test else "train"].append(task)  # tasks are drawn in random order already
    return splits


# ---------------------------------------------------------------- build / load


def _generation_spec(cfg: DataConfig) -> dict[str, Any]:
    """Every config field that changes the files (experts and paths do not)."""
    return {"version": WORLD_VERSION, "seed": cfg.seed, "num_countries": cfg.num_countries,
            "num_companies": cfg.num_companies, "num_people": cfg.num_people,
            "tasks_per_family": cfg.tasks_per_family, "test_fraction": cfg.test_fraction,
            "families": list(cfg.families)}


def _write_world(cfg: DataConfig, folder: Path) -> None:
    world = _entities(cfg)
    corpus = _corpus(world, cfg.seed)
    splits = _splits(cfg, world)

    def jsonl(rows: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(r) + "\n" for r in rows)

    files = {"corpus.jsonl": jsonl(corpus), "world.json": json.dumps(world, indent=1) + "\n"}
    files.update({f"{split}.jsonl": jsonl([asdict(t) for t in tasks]) for split, tasks in splits.items()})
    for name, text in files.items():
        (folder / name).write_text(text)
    counts: dict[str, Any] = {kind: len(entities) for kind, entities in world.items()}
    counts["documents"] = len(corpus)
    for split, tasks in splits.items():
        counts[split] = {f: sum(t.family == f for t in tasks) for f in cfg.families}
    manifest = {"name": cfg.name, "config": _generation_spec(cfg), "counts": counts,
                "sha256": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(files.items())}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def build_world(cfg: DataConfig) -> Path:
    """The world folder for `cfg`: `cfg.path` if set, else built once into `cfg.cache_dir` and reused."""
    if cfg.path:
        folder = Path(cfg.path).expanduser()
        if not (folder / "manifest.json").is_file():
            raise ConfigError("data.path", f"{folder} is not a built world folder (no manifest.json)")
        return folder
    digest = hashlib.sha256(json.dumps(_generation_spec(cfg), sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cfg.cache_dir).expanduser() / f"{cfg.name}-seed{cfg.seed}-{digest}"
    if (folder / "manifest.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: readers never see a half-written world, and concurrent builders
    # (several actors starting at once) each produce the same files, of which the first rename wins.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        _write_world(cfg, tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "manifest.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def load_world(world_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """All entities of a built world with their facts, hidden ones included."""
    return json.loads((Path(world_dir) / "world.json").read_text())


def load_tasks(world_dir: str | Path, split: str) -> list[Task]:
    """The tasks of one split ("train" or "test") of a built world."""
    from datasets import load_dataset  # importing datasets takes ~1 s; only loading needs it

    path = Path(world_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no split {split!r} in world {world_dir} ({path.name} missing)")
    if path.stat().st_size == 0:  # a split can be empty (test_fraction 0); datasets cannot load an empty file
        return []
    return [Task.from_dict(row) for row in load_dataset("json", data_files=str(path), split="train")]
