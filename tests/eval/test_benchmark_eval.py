"""End to end: `orchestra-rl eval` over HLE- and FRAMES-layout files (written here: no benchmark can be downloaded),
each trajectory graded by the rules and then by a judge in HLE's style on a loopback OpenAI-compatible server (the
stand-in for a paid judge model)."""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import PRETRAIN, free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

# Gold answers no untrained policy writes by chance; the judge accepts any answer to a "(lenient)" question.
HLE_ROWS = [
    {"id": "a1", "question": "(lenient) What code opens the vault?", "answer": "zq-4417", "answer_type": "exactMatch",
     "image": ""},
    {"id": "a2", "question": "Which option names the vault?\nAnswer Choices:\nA. xv\nB. yw", "answer": "B",
     "answer_type": "multipleChoice", "image": ""},
    {"id": "a3", "question": "What is drawn here?", "answer": "qk", "answer_type": "exactMatch",
     "image": "data:image/png;base64,iVBORw0KGgo="},
]
FRAMES_ROWS = [
    {"Prompt": "(lenient) Which river did the founder of Vrell cross?", "Answer": "Oduna-Vel",
     "wiki_links": "['https://en.wikipedia.org/wiki/Vrell']"},
    {"Prompt": "How many towers did Vrell have in 1431?", "Answer": "391187", "wiki_links": "[]"},
]


def lenient_judge(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    ok = "(lenient)" in re.search(r"\[question\]: (.*)", prompt).group(1)
    return f"extracted_final_answer: whatever\nreasoning: -\ncorrect: {'yes' if ok else 'no'}"


def test_eval_grades_hle_and_frames_files_by_rules_and_judge(cache_dir, tmp_path, openai_stub_server):
    openai_stub_server.responder = lenient_judge
    pd.DataFrame(HLE_ROWS).to_parquet(tmp_path / "hle.parquet")
    pd.DataFrame(FRAMES_ROWS).to_csv(tmp_path / "frames.tsv", sep="\t")
    out = tmp_path / "eval"
    judge = [f"env.{name}.judge.{k}" for name in ("hle", "frames") for k in (
        "model=judge", f"base_url={openai_stub_server.base_url}", "price_in_per_mtok=1.0", "price_out_per_mtok=4.0")]
    # The answer tool alone, every turn constrained to a well-formed call: each trajectory answers at once.
    cmd = [sys.executable, "-m", "orchestra_rl.cli", "eval", "env=[hle,frames]",
           f"model.cache_dir={cache_dir}/models", PRETRAIN,
           f"data.cache_dir={cache_dir}/worlds", "data.tasks_per_family=8", f"env.hle.data_files.test={tmp_path}/hle.parquet",
           f"env.frames.data_files.test={tmp_path}/frames.tsv", *judge, "eval.max_tasks=0", "eval.group_size=2",
           f"eval.output_dir={out}", f"serve.port={free_port()}", "rollout.max_turns=2",
           "rollout.constrained_tools=[answer]",
           *(f"tools.tools.{t}.enabled=false" for t in ("python", "search", "math_expert", "small_generalist",
                                                         "large_generalist"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    (run_dir,) = list(out.iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    trajectories = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    # The HLE row with an image is left out (text-only): 2 + 2 tasks, 2 trials each.
    assert sorted({t["task_id"] for t in trajectories}) == ["frames/0", "frames/1", "hle/a1", "hle/a2"]
    assert all(t["stop_reason"] == "answer" and t["final_answer"] is not None for t in trajectories)
    # The rules reject every answer; the judge accepts the lenient questions' and only those.
    for t in trajectories:
        lenient = t["task_id"] in ("hle/a1", "frames/0")
        assert t["env_info"]["rule"] == 0.0 and t["env_outcome"] == float(lenient)
        assert t["env_info"]["judge"]["verdict"] == float(lenient)
        assert t["env_info"]["judge"]["cost_usd"] == pytest.approx((1000 * 1.0 + 500 * 4.0) / 1e6)
    assert openai_stub_server.calls == 8
    assert report["families"]["hle"]["accuracy"] == report["families"]["frames"]["accuracy"] == 0.5
    assert report["overall"]["accuracy"] == 0.5
    # The judge's dollars are the benchmark's, not the policy's: a trajectory's cost is its calls and tokens.
    costs = [sum(c["result"]["cost_usd"] for turn in t["turns"] for c in turn["calls"]) + t["policy_cost_usd"]
             for t in trajectories]
    assert report["overall"]["cost_usd"] == pytest.approx(sum(costs) / len(costs)) and max(costs) < 0.003
    per_task = {r["task_id"]: r for r in json.loads((run_dir / "tasks.json").read_text())}
    assert per_task["hle/a1"]["successes"] == 2 and per_task["hle/a2"]["successes"] == 0
