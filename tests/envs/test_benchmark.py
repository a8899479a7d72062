"""QA benchmarks as an environment: answers given through the real agent loop and answer tool, graded by the rules
of their answer type and, where the rules reject one, by a judge in HLE's style on a loopback OpenAI-compatible
server (the stand-in for a paid judge model): its verdicts, its cost per episode, and its failures, after which
the rule's grade stands."""

import asyncio
import json
import re

import pytest
from transformers import AutoTokenizer

from orchestra_rl.config import RolloutConfig, load_config
from orchestra_rl.envs.sources import load_tasks, make_environment
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import ScriptedEngine
from orchestra_rl.tools.answer import from_config as answer_tool
from orchestra_rl.tools.base import Pricing, ToolContext
from orchestra_rl.types import ToolCall

pytestmark = pytest.mark.integration

ROWS = [
    {"id": "n", "question": "What is 6 times 7?", "answer": "42", "answer_type": "exactMatch"},
    {"id": "mc", "question": "Capital of France?\nAnswer Choices:\nA. Paris\nB. Rome", "answer": "A",
     "answer_type": "multipleChoice"},
    {"id": "w", "question": "Who wrote Emma?", "answer": "Jane Austen", "answer_type": "exactMatch"},
]


def judge_responder(body: dict) -> str:
    """A judge that accepts a response naming the correct answer's last word (a paraphrase the rules reject)."""
    prompt = body["messages"][-1]["content"]
    response = re.search(r"\[response\]: (.*)", prompt).group(1)
    gold = re.search(r"\[correct_answer\]: (.*)", prompt).group(1)
    if response == "garbled":
        return "I would say it is probably fine."
    ok = gold.split()[-1].lower() in response.lower()
    return f"extracted_final_answer: {response}\nreasoning: compared\ncorrect: {'yes' if ok else 'no'}"


def hle_environment(tmp_path, stub, tiny_model_path):
    """The three-row HLE source judged by `stub`, and a coroutine that answers one task through the agent loop."""
    data = tmp_path / "hle.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = load_config(["env=[hle]", f"env.hle.data_files.test={data}", "env.hle.judge.model=judge",
                       f"env.hle.judge.base_url={stub.base_url}", "env.hle.judge.max_retries=0",
                       "env.hle.judge.price_in_per_mtok=2.0", "env.hle.judge.price_out_per_mtok=8.0"])
    answer = answer_tool("answer", cfg.tools.tools["answer"], ToolContext())
    env = make_environment(cfg, lambda name, arguments, task: answer.call(arguments, task), [answer.schema()])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tasks = {t.task_id: t for t in load_tasks(cfg, "", "test")}

    async def run(task_id: str, text: str):
        turn = ToolCall("answer", {"answer": text}).render()
        loop = AgentLoop(ScriptedEngine(tokenizer, [turn]), env, ChatFormat(tokenizer, "", [answer.schema()]),
                         RolloutConfig(max_turns=2, max_tokens_per_turn=10**5, max_total_tokens=10**6), Pricing(0, 0))
        return await loop.run(tasks[task_id], 0)

    return env, run


def grade_answers(tmp_path, stub, tiny_model_path, answers: dict[str, str]) -> dict[str, tuple]:
    env, run = hle_environment(tmp_path, stub, tiny_model_path)

    async def all_runs():
        try:
            return await asyncio.gather(*(run(task_id, text) for task_id, text in answers.items()))
        finally:
            await env.close()

    trajectories = asyncio.run(all_runs())
    return {t.task_id: (t.final_answer, t.env_outcome, t.env_info) for t in trajectories}


def test_rules_decide_what_they_accept_and_the_judge_what_they_reject(openai_stub_server, tmp_path,
                                                                     tiny_model_path):
    openai_stub_server.responder = judge_responder
    graded = grade_answers(tmp_path, openai_stub_server, tiny_model_path,
                           {"hle/n": "42.0", "hle/mc": "(a) Paris", "hle/w": "Austen"})
    # A rule match is certain and costs nothing: no judge call for the number or the letter.
    assert graded["hle/n"][1:] == (1.0, {"rule": 1.0, "answer_type": "exactMatch"})
    assert graded["hle/mc"][1:] == (1.0, {"rule": 1.0, "answer_type": "multipleChoice"})
    # "Austen" is not "Jane Austen" by the rules; the judge accepts it, at its price, never charged to the policy.
    answer, outcome, info = graded["hle/w"]
    assert (answer, outcome, info["rule"]) == ("Austen", 1.0, 0.0)
    assert info["judge"] == {"calls": 1, "tokens_in": 1000, "tokens_out": 500, "cost_usd": pytest.approx(0.006),
                             "usage_estimated": False, "verdict": 1.0, "error": None}
    assert openai_stub_server.calls == 1
    assert "[question]: Who wrote Emma?" in openai_stub_server.requests[0]["messages"][-1]["content"]

    wrong = grade_answers(tmp_path, openai_stub_server, tiny_model_path, {"hle/w": "Dickens", "hle/mc": "B"})
    assert wrong["hle/w"][1] == 0.0 and wrong["hle/w"][2]["judge"]["verdict"] == 0.0
    assert wrong["hle/mc"][1] == 0.0 and wrong["hle/mc"][2]["judge"]["verdict"] == 0.0


def test_a_judge_that_fails_or_says_no_verdict_leaves_the_rule_grade(openai_stub_server, tmp_path, tiny_model_path):
    openai_stub_server.responder = judge_responder
    graded = grade_answers(tmp_path, openai_stub_server, tiny_model_path, {"hle/w": "garbled"})
    _, outcome, info = graded["hle/w"]
    assert outcome == 0.0 and info["judge"]["verdict"] is None
    assert info["judge"]["error"].startswith("no 'correct: yes|no' in the reply")

    openai_stub_server.always_status = 500
    graded = grade_answers(tmp_path, openai_stub_server, tiny_model_path, {"hle/w": "Austen", "hle/n": "42"})
    assert graded["hle/n"][1] == 1.0  # the rules need no judge
    _, outcome, info = graded["hle/w"]
    assert outcome == 0.0 and "500" in info["judge"]["error"] and info["judge"]["cost_usd"] == 0.0


def test_closing_the_environment_closes_the_judges_client(openai_stub_server, tmp_path, tiny_model_path):
    openai_stub_server.responder = judge_responder
    env, run = hle_environment(tmp_path, openai_stub_server, tiny_model_path)

    async def episode_then_close():
        first = await run("hle/w", "Austen")
        judge = env.environments["hle"].judge
        await env.close()
        closed = judge.client.is_closed()
        second = await run("hle/w", "Austen")  # after close, a later episode gets a fresh client
        await env.close()
        return first, closed, second

    first, closed, second = asyncio.run(episode_then_close())
    assert closed
    assert first.env_outcome == second.env_outcome == 1.0 and openai_stub_server.calls == 2
