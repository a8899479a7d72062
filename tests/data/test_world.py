import hashlib
import json
import re
from pathlib import Path

import pytest

from orchestra_rl.config import ConfigError, DataConfig
from orchestra_rl.data.reading import ATTRIBUTE_KEYWORDS, python_code, search_query
from orchestra_rl.data.world import (HIDDEN_QUESTIONS, PREFERENCE_PRESETS, build_world, evaluate_arithmetic,
                                     fact_questions, load_tasks, load_world)
from orchestra_rl.reward.outcome import normalize_answer

SMALL = dict(num_countries=6, num_companies=6, num_people=6, tasks_per_family=12, test_fraction=0.25)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return build_world(DataConfig(cache_dir=str(tmp_path_factory.mktemp("worlds"))))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_builds_byte_identical_files(tmp_path):
    a = build_world(DataConfig(cache_dir=str(tmp_path / "a"), **SMALL))
    b = build_world(DataConfig(cache_dir=str(tmp_path / "b"), **SMALL))
    assert a.name == b.name and a.name.startswith("toolscale_mini-seed0-")
    assert _files(a) == _files(b)
    assert sorted(_files(a)) == ["corpus.jsonl", "manifest.json", "test.jsonl", "train.jsonl", "world.json"]


def test_other_seed_or_size_is_another_world(tmp_path):
    base = build_world(DataConfig(cache_dir=str(tmp_path), **SMALL))
    reseeded = build_world(DataConfig(cache_dir=str(tmp_path), **{**SMALL, "seed": 1}))
    bigger = build_world(DataConfig(cache_dir=str(tmp_path), **{**SMALL, "tasks_per_family": 16}))
    assert len({base, reseeded, bigger}) == 3
    assert (base / "world.json").read_bytes() != (reseeded / "world.json").read_bytes()
    # Entities and corpus come from their own RNG streams: more tasks leave them unchanged.
    assert (base / "corpus.jsonl").read_bytes() == (bigger / "corpus.jsonl").read_bytes()


def test_built_once_then_reused(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), **SMALL)
    folder = build_world(cfg)
    (folder / "marker").write_text("kept")
    assert build_world(cfg) == folder and (folder / "marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind


def test_explicit_path(tmp_path):
    folder = build_world(DataConfig(cache_dir=str(tmp_path), **SMALL))
    assert build_world(DataConfig(path=str(folder))) == folder
    with pytest.raises(ConfigError, match=r"data\.path: .*nowhere.* not a built world"):
        build_world(DataConfig(path=str(tmp_path / "nowhere")))


def test_more_tasks_than_the_world_has_questions_is_named(tmp_path):
    # Not a config.validate rule: how many distinct questions there are depends on the generated world.
    with pytest.raises(ConfigError, match=r"data\.tasks_per_family: 50 exceeds the 36 distinct hard"):
        build_world(DataConfig(cache_dir=str(tmp_path), **{**SMALL, "tasks_per_family": 50}))
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing


def test_empty_test_split(tmp_path):
    folder = build_world(DataConfig(cache_dir=str(tmp_path), **{**SMALL, "test_fraction": 0.0}))
    assert load_tasks(folder, "test") == [] and len(load_tasks(folder, "train")) == 4 * 12


def test_splits_sizes_and_manifest(world_dir):
    train, test = load_tasks(world_dir, "train"), load_tasks(world_dir, "test")
    cfg = DataConfig()
    for tasks, n in ((train, 48), (test, 16)):  # 64 per family, a quarter of them in test
        assert {f: sum(t.family == f for t in tasks) for f in cfg.families} == {f: n for f in cfg.families}
    questions = [t.question for t in train + test]
    assert len(set(questions)) == len(questions)  # no test question is ever trained on
    assert len({t.task_id for t in train + test}) == len(questions)
    manifest = json.loads((world_dir / "manifest.json").read_text())
    assert manifest["counts"]["test"]["hard"] == 16 and manifest["counts"]["countries"] == 24
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((world_dir / name).read_bytes()).hexdigest() == digest
    with pytest.raises(FileNotFoundError, match="no split 'dev'"):
        load_tasks(world_dir, "dev")


def test_preferences_come_from_the_presets(world_dir):
    tasks = load_tasks(world_dir, "train")
    presets = {json.dumps(p, sort_keys=True): text for p, text in PREFERENCE_PRESETS}
    for t in tasks:
        assert presets[json.dumps(t.preference, sort_keys=True)] == t.preference_text
    assert len({t.preference_text for t in tasks}) == len(PREFERENCE_PRESETS)  # all presets occur
    assert any(t.preference == {"large_generalist": -1.0} for t in tasks)  # survives the datasets round trip


def test_answers_are_right(world_dir):
    world = load_world(world_dir)
    facts = {q: a for _, q, a, _ in fact_questions(world)}
    by_name = {e["name"]: e for kind in world.values() for e in kind}
    for t in load_tasks(world_dir, "train") + load_tasks(world_dir, "test"):
        if t.family == "arithmetic":
            assert t.question == f"What is {t.metadata['expression']}?"
            assert t.answer == str(evaluate_arithmetic(t.metadata["expression"]))
        elif t.family == "multihop":
            used = [by_name[e][a] for e, a in zip(t.metadata["entities"], t.metadata["attributes"])]
            assert sorted(map(int, re.findall(r"\d+", t.metadata["expression"]))) == sorted(used)
            assert t.answer == str(evaluate_arithmetic(t.metadata["expression"])) and int(t.answer) >= 0
        else:
            assert facts[t.question] == t.answer
        assert re.fullmatch(r"-?\d+|[A-Z][a-z]+( [A-Z][a-z]+)?", t.answer)


def test_hidden_facts_are_not_in_the_corpus_and_lookups_are(world_dir):
    corpus = normalize_answer(" ".join(json.loads(line)["text"] for line in (world_dir / "corpus.jsonl").open()))
    words = set(re.findall(r"\w+", corpus))
    hidden = [a for f, _, a, _ in fact_questions(load_world(world_dir)) if f == "hard"]
    assert len(hidden) == len(HIDDEN_QUESTIONS) * 24
    assert not any(normalize_answer(a) in words for a in hidden)
    assert all(normalize_answer(a) in words for f, _, a, _ in fact_questions(load_world(world_dir)) if f == "lookup"
               and " " not in a)


@pytest.mark.parametrize("expression, value", [("3817 * 29 + 112", 110805), ("(2 + 3) * -4", -20), ("7 / 2", 3.5),
                                               ("2 ** 10", 1024), ("17 // 5 % 2", 1)])
def test_evaluate_arithmetic(expression, value):
    assert evaluate_arithmetic(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "x + 1", "9 ** 9 ** 9", "1 / 0", "2 +",
                                        "True + 1", "[1] * 3", "1e999", "((99 ** 64) ** 64) ** 64"])
def test_evaluate_arithmetic_refuses_anything_else(expression):
    with pytest.raises(ValueError):
        evaluate_arithmetic(expression)


def test_search_query_and_python_code_read_the_task(world_dir):
    tasks = {t.family: t for t in load_tasks(world_dir, "train")}
    lookup, hop, arithmetic = tasks["lookup"], tasks["multihop"], tasks["arithmetic"]
    assert search_query(lookup, 0) == lookup.question
    # A multihop task searches each entity with its attribute's keyword, in the question's order.
    for j, (entity, attribute) in enumerate(zip(hop.metadata["entities"], hop.metadata["attributes"])):
        assert search_query(hop, j) == f"{entity} {ATTRIBUTE_KEYWORDS[attribute]}"
    # The numbers of an arithmetic task are in its question; a multihop task's only once both facts were read.
    assert python_code(arithmetic, []) == f"print({arithmetic.metadata['expression']})"
    numbers = re.findall(r"\d+", hop.metadata["expression"])
    passages = [f"{hop.metadata['entities'][j]} has {int(n):,}." for j, n in enumerate(numbers)]
    assert python_code(hop, []) == python_code(hop, passages[:1]) == f"print({hop.question!r})"
    assert python_code(hop, passages) == f"print({hop.metadata['expression']})"
