"""QA benchmarks as tasks: files in the layouts of HLE and FRAMES, read with `datasets` (JSONL, JSON, Parquet, CSV,
TSV), one file per split (`env.<name>.data_files`). The tasks run in the QA loop (envs/benchmark.py) and are graded
by the rules of their answer type and, where configured, an LLM judge in HLE's style (reward/outcome.py).

    HLE       id, question, answer, answer_type (exactMatch | multipleChoice); optional category, raw_subject,
              image. Text-only: a row with an image is left out (counted, logged).
    FRAMES    question or Prompt, answer or Answer; optional links or wiki_links (a list, or its Python/JSON text),
              reasoning_types. Rows without an id are numbered in file order.

No benchmark can be downloaded on a machine without a hub; point `data_files` at a copy (docs/environments.md).
"""

from __future__ import annotations

import ast
import functools
import json
import logging
from pathlib import Path
from typing import Any

from orchestra_rl.config import ConfigError, EnvSourceConfig
from orchestra_rl.types import Task

log = logging.getLogger(__name__)

# Column names of each layout: ours first, then what the benchmark's own release calls it.
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "hle": {"id": ("id",), "question": ("question",), "answer": ("answer",), "answer_type": ("answer_type",)},
    "frames": {"question": ("question", "Prompt"), "answer": ("answer", "Answer")},
}
ANSWER_TYPES = ("exactMatch", "multipleChoice")
# `datasets` builder (and its options) by file suffix.
BUILDERS: dict[str, tuple[str, dict[str, str]]] = {
    ".jsonl": ("json", {}), ".json": ("json", {}), ".parquet": ("parquet", {}), ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
}


def load_benchmark_tasks(name: str, source: EnvSourceConfig, split: str) -> list[Task]:
    """The tasks of `split` (none if no file is given for it), each tagged with the source `name`."""
    path = source.data_files.get(split)
    if not path:
        return []
    return list(_load(name, path, source.layout, f"env.{name}.data_files.{split}"))


@functools.lru_cache(maxsize=16)
def _load(name: str, path: str, layout: str, key: str) -> tuple[Task, ...]:
    rows = read_rows(path, key)
    columns = set(rows[0]) if rows else set()
    layout = detect_layout(columns, key, path) if layout == "auto" else layout
    missing = [alts[0] for alts in LAYOUTS[layout].values() if not columns & set(alts)]
    if missing:
        raise ConfigError(key, f"{path}: the {layout} layout needs column(s) {', '.join(missing)}; the file has "
                               f"{', '.join(sorted(columns)) or 'no rows'}")
    tasks, with_image = [], 0
    for i, row in enumerate(rows):
        if layout == "hle" and row.get("image"):
            with_image += 1
            continue
        tasks.append((hle_task if layout == "hle" else frames_task)(name, i, row, f"{key} ({path}) row {i}"))
    if with_image:
        log.warning("%s: %d of %d rows have an image and are left out (text-only)", path, with_image, len(rows))
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise ConfigError(key, f"{path}: ids are not unique ({len(ids) - len(set(ids))} repeated)")
    return tuple(tasks)


def read_rows(path: str, key: str) -> list[dict[str, Any]]:
    import datasets  # ~1 s to import: only where a benchmark is configured

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(key, f"no file {path}")
    builder = BUILDERS.get("".join(file.suffixes[-1:]).lower())
    if builder is None:
        raise ConfigError(key, f"{path}: unknown file type; known: {', '.join(BUILDERS)}")
    kind, options = builder
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a bar per file read would cut through the run's own progress bars
    try:
        data = datasets.load_dataset(kind, data_files=str(file), split="train", **options)
    except Exception as e:  # a file `datasets` cannot parse: say which, in one line
        raise ConfigError(key, f"{path}: not readable as {kind}: {type(e).__name__}: {str(e)[:300]}") from e
    finally:
        if bars:
            datasets.enable_progress_bars()
    return list(data)


def detect_layout(columns: set[str], key: str, path: str) -> str:
    if {"id", "question", "answer", "answer_type"} <= columns:
        return "hle"
    if {"question", "Prompt"} & columns and {"answer", "Answer"} & columns:
        return "frames"
    raise ConfigError(key, f"{path}: neither HLE's columns (id, question, answer, answer_type) nor FRAMES' "
                           f"(question/Prompt, answer/Answer); the file has {', '.join(sorted(columns)) or 'no rows'}")


def _text(row: dict[str, Any], names: tuple[str, ...], where: str) -> str:
    value = next((row[n] for n in names if row.get(n) is not None), None)
    if value is None or not str(value).strip():
        raise ConfigError(where, f"empty {names[0]}")
    return str(value).strip()


def hle_task(name: str, index: int, row: dict[str, Any], where: str) -> Task:
    answer_type = _text(row, ("answer_type",), where)
    if answer_type not in ANSWER_TYPES:
        raise ConfigError(where, f"answer_type {answer_type!r}; known: {', '.join(ANSWER_TYPES)}")
    metadata = {"benchmark": "hle", "answer_type": answer_type}
    metadata |= {k: row[k] for k in ("category", "raw_subject") if row.get(k)}
    return Task(task_id=f"{name}/{_text(row, ('id',), where)}", family=name, question=_text(row, ("question",), where),
                answer=_text(row, ("answer",), where), metadata=metadata, env=name)


def frames_task(name: str, index: int, row: dict[str, Any], where: str) -> Task:
    metadata: dict[str, Any] = {"benchmark": "frames", "answer_type": "exactMatch",
                                "links": parse_links(row.get("links", row.get("wiki_links")))}
    if row.get("reasoning_types"):
        metadata["reasoning_types"] = row["reasoning_types"]
    task_id = row.get("id") if row.get("id") is not None else index
    return Task(task_id=f"{name}/{task_id}", family=name, question=_text(row, ("question", "Prompt"), where),
                answer=_text(row, ("answer", "Answer"), where), metadata=metadata, env=name)


def parse_links(value: Any) -> list[str]:
    """FRAMES' links: a list, or the text of one (its release writes Python's repr of a list)."""
    if value is None or isinstance(value, list):
        return [str(v) for v in value or []]
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(str(value))
        except (ValueError, SyntaxError):
            continue
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    return [str(value)]
