"""QA benchmark files in the layouts of HLE and FRAMES (written here: nothing can be downloaded), read through
`datasets` in every format a release may come in, and the rules that grade their answers."""

import json
import re

import pandas as pd
import pytest

from orchestra_rl.config import ConfigError, load_config
from orchestra_rl.envs.sources import check_sources, load_tasks
from orchestra_rl.reward.outcome import choice_match, parse_benchmark_verdict

HLE_ROWS = [
    {"id": "66e9", "question": "What is 6 times 7?", "answer": "42", "answer_type": "exactMatch", "image": "",
     "category": "Math", "raw_subject": "Arithmetic", "rationale": "6*7", "author_name": "A"},
    {"id": "66f0", "question": "Which city is the capital of France?\nAnswer Choices:\nA. Paris\nB. Rome",
     "answer": "A", "answer_type": "multipleChoice", "image": "", "category": "Humanities", "raw_subject": "Geo",
     "rationale": "", "author_name": "B"},
    {"id": "6701", "question": "What animal is in the picture?", "answer": "cat", "answer_type": "exactMatch",
     "image": "data:image/png;base64,iVBORw0KGgo=", "category": "Other", "raw_subject": "", "rationale": "",
     "author_name": "C"},
]
FRAMES_ROWS = [  # the columns of FRAMES' release (test.tsv)
    {"Unnamed: 0": 0, "Prompt": "Who wrote the novel whose heroine is Emma Woodhouse?", "Answer": "Jane Austen",
     "wiki_links": "['https://en.wikipedia.org/wiki/Emma_(novel)', 'https://en.wikipedia.org/wiki/Jane_Austen']",
     "reasoning_types": "Multiple constraints"},
    {"Unnamed: 0": 1, "Prompt": "How many years after Dune was its first sequel published?", "Answer": "4",
     "wiki_links": "['https://en.wikipedia.org/wiki/Dune_Messiah']", "reasoning_types": "Numerical reasoning"},
]


def config(*overrides: str):
    return load_config(list(overrides))


def test_hle_and_frames_files_load_as_tasks_in_every_format(tmp_path):
    pd.DataFrame(HLE_ROWS).to_parquet(tmp_path / "hle.parquet")
    (tmp_path / "hle.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HLE_ROWS))
    pd.DataFrame(FRAMES_ROWS).to_csv(tmp_path / "frames.tsv", sep="\t", index=False)
    ours = [{"question": r["Prompt"], "answer": r["Answer"], "links": json.loads(r["wiki_links"].replace("'", '"'))}
            for r in FRAMES_ROWS]
    (tmp_path / "frames.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))

    for hle_file, frames_file in [("hle.parquet", "frames.tsv"), ("hle.jsonl", "frames.jsonl")]:
        cfg = config("env=[hle,frames]", f"env.hle.data_files.test={tmp_path / hle_file}",
                     f"env.frames.data_files.train={tmp_path / frames_file}", "env.frames.layout=auto")
        check_sources(cfg)
        hle = load_tasks(cfg, "", "test")
        # Text-only: the row with an image is left out.
        assert [(t.task_id, t.family, t.env, t.answer, t.metadata["answer_type"]) for t in hle] == [
            ("hle/66e9", "hle", "hle", "42", "exactMatch"), ("hle/66f0", "hle", "hle", "A", "multipleChoice")]
        assert hle[1].question.endswith("B. Rome") and hle[0].metadata["category"] == "Math"
        frames = load_tasks(cfg, "", "train")
        assert [(t.task_id, t.family, t.answer) for t in frames] == [("frames/0", "frames", "Jane Austen"),
                                                                      ("frames/1", "frames", "4")]
        assert frames[0].metadata["links"] == ["https://en.wikipedia.org/wiki/Emma_(novel)",
                                               "https://en.wikipedia.org/wiki/Jane_Austen"]
        assert frames[0].question.startswith("Who wrote")


@pytest.mark.parametrize("rows, overrides, problem", [
    (None, (), "env.hle.data_files.test: no file"),
    ([{"id": "1", "question": "q", "answer": "a"}], (), "needs column(s) answer_type"),
    ([{"id": "1", "question": "q", "answer": "a", "answer_type": "essay"}], (), "answer_type 'essay'"),
    ([{"id": "1", "question": "q", "answer": "a", "answer_type": "exactMatch"}] * 2, (), "ids are not unique"),
    ([{"id": "1", "question": " ", "answer": "a", "answer_type": "exactMatch"}], (), "row 0: empty question"),
    ([{"q": "1"}], ("env.hle.layout=auto",), "neither HLE's columns"),
])
def test_a_bad_benchmark_file_is_one_error_naming_the_key_and_the_file(tmp_path, rows, overrides, problem):
    path = tmp_path / "hle.jsonl"
    if rows is not None:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=re.escape(problem)) as raised:
        check_sources(config("env=[hle]", f"env.hle.data_files.test={path}", *overrides))
    assert str(raised.value).startswith("env.hle.data_files.test")


def test_a_benchmark_without_files_or_with_an_unknown_layout_is_a_config_error():
    with pytest.raises(ConfigError, match="env.hle.data_files: a benchmark needs its files"):
        config("env=[hle]")
    with pytest.raises(ConfigError, match="env.frames.layout: unknown layout 'squad'"):
        config("env=[frames]", "env.frames.data_files.test=x.tsv", "env.frames.layout=squad")


@pytest.mark.parametrize("prediction, score", [("B", 1.0), ("(b)", 1.0), ("B. Rome", 1.0), ("Answer: B", 1.0),
                                               ("The answer is B", 1.0), ("A", 0.0), ("Rome", 0.0), ("", 0.0)])
def test_a_multiple_choice_answer_is_graded_by_its_letter(prediction, score):
    assert choice_match(prediction, "B") == score


@pytest.mark.parametrize("reply, verdict", [
    ("extracted_final_answer: 42\nreasoning: same number\ncorrect: yes", 1.0),
    ("extracted_final_answer: Rome\nreasoning: differs\n**correct:** No", 0.0),
    ("I think the answer is right.", None),
])
def test_the_judge_verdict_is_read_from_its_correct_line(reply, verdict):
    assert parse_benchmark_verdict(reply) == verdict
