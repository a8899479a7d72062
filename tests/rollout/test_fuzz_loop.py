"""Fuzzed policy outputs through the whole rollout path: parser → argument validation → tool executor (the real
tools: the sandboxed python tool, BM25 search, the answer tool, experts on a loopback OpenAI-compatible server) →
QA environment → agent loop, in batches. Seeded generation near the tool-call format — duplicate keys, deep
nesting, 4300-digit integers, NaN, oversized arguments, unknown tools, wrong or missing arguments, too many calls,
cut and spliced calls, stray tags, plain text — mixed with well-formed calls.

Pinned: no exception escapes a trajectory (none ends as "error"), every batch comes back whole, every malformed
output gets an error observation, and every well-formed call runs without one. ORCHESTRA_FUZZ_TURNS sets the number
of policy turns (CI: 3000; a run of 12,000 is recorded in docs/tools.md)."""

import asyncio
import json
import os
import random
import re

import pytest
from transformers import AutoTokenizer

from orchestra_rl.config import RolloutConfig, final_tool_names
from orchestra_rl.data.world import build_world, load_tasks
from orchestra_rl.envs.qa import QAEnvironment
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import scripted_generation
from orchestra_rl.rollout.parser import MAX_CALL_CHARS
from orchestra_rl.tools.base import Pricing, ToolContext
from orchestra_rl.tools.executor import ToolExecutor
from tests.helpers import require_sandbox

pytestmark = pytest.mark.integration

TURNS = int(os.environ.get("ORCHESTRA_FUZZ_TURNS", "3000"))
BATCH = 64
MAX_CALLS = 3


class FuzzPolicy:
    """The Engine protocol: each turn a seeded fuzzed output, tagged `#<n>` so the test knows what it wrote."""

    def __init__(self, tokenizer, schemas: list[dict], seed: int = 0):
        self.tokenizer, self.rng = tokenizer, random.Random(seed)
        self.required = {s["function"]["name"]: s["function"]["parameters"].get("required", []) for s in schemas}
        self.written: dict[int, bool] = {}  # tag -> whether the output is well-formed

    def valid_call(self) -> dict:
        # Mostly cheap tools: the python tool is a sandboxed process (~60 ms on 2 cores).
        name = self.rng.choice(["search"] * 6 + ["math_expert"] * 4 + ["answer"] * 3 + ["python"])
        args = {p: "print(6 * 7)" if name == "python" else self.rng.choice(["Vrell", "12 + 30", "who?"])
                for p in self.required[name]}
        return {"name": name, "arguments": args}

    def call_text(self, body: str) -> str:
        return f"<tool_call>\n{body}\n</tool_call>"

    def malformed(self) -> str:
        r, valid = self.rng, self.valid_call()
        name, args = valid["name"], valid["arguments"]
        key = next(iter(args), "x")
        depth = r.choice([40, 1500])
        bodies = [
            f'{{"name": "python", "name": "{name}", "arguments": {json.dumps(args)}}}',  # duplicate key
            '{"name": "%s", "arguments": %s1%s}' % (name, '{"k": ' * depth, "}" * depth),
            '{"name": "%s", "arguments": {"%s": %s}}' % (name, key, "7" * 5000),  # past int's digit limit
            '{"name": "%s", "arguments": {"%s": NaN}}' % (name, key),
            json.dumps({"name": name, "arguments": {key: "x" * r.randint(MAX_CALL_CHARS, 4 * MAX_CALL_CHARS)}}),
            json.dumps({"name": r.choice(["pyth0n", "answer\u2063", "", "rm -rf /"]), "arguments": args}),
            json.dumps({"name": name, "arguments": {}}),  # a required argument missing
            json.dumps({"name": name, "arguments": {key: 12}}),  # wrong type
            json.dumps({"name": name, "arguments": {**args, "extra": "x"}}),
            json.dumps({"name": name, "arguments": r.choice(['"print(1)"', "[1, 2]", "null"])}),
            json.dumps({"name": name, "arguments": r.choice(["print(1)", [1, 2], None, 3])}),
            json.dumps([valid]),
        ]
        whole = self.call_text(json.dumps(valid))
        cut = r.randint(len("<tool_call>\n") + 1, len(whole) - len("\n</tool_call>") - 1)  # inside the object
        texts = [self.call_text(r.choice(bodies)) for _ in range(4)] + [
            whole[:cut] + "\n</tool_call>",  # the object cut short, then closed
            whole[:cut],  # cut short: never closed
            "<tool_call>" + whole,  # opened inside another call
            "".join(self.call_text(json.dumps(self.valid_call())) for _ in range(MAX_CALLS + r.randint(1, 3))),
            r.choice(["I think the answer is 42.", "</tool_call>", "<tool_call", "{\"name\": \"answer\"}", ""]),
        ]
        return r.choice(texts)

    async def generate(self, prompt_ids, max_tokens, temperature=1.0, top_p=1.0, stop_token_ids=None, stop=None,
                       regex=None):
        tag = len(self.written)
        well_formed = self.rng.random() < 0.4
        if well_formed:
            text = "".join(self.call_text(json.dumps(self.valid_call())) for _ in range(self.rng.randint(1, MAX_CALLS)))
        else:
            text = self.malformed()
        self.written[tag] = well_formed
        await asyncio.sleep(0)  # trajectories interleave as on a real engine
        return scripted_generation(self.tokenizer, f"#{tag} {text}", max_tokens, stop_token_ids)


def test_fuzzed_outputs_never_lose_a_trajectory_and_every_malformed_one_is_told(make_config, tiny_model_path,
                                                                                  openai_stub_server):
    require_sandbox()
    cfg = make_config(f"rollout.max_calls_per_turn={MAX_CALLS}", "tools.tools.python.timeout_s=5")
    world = build_world(cfg.data)
    executor = ToolExecutor(cfg.tools, ToolContext(world_dir=str(world), experts_base_url=openai_stub_server.base_url))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    policy = FuzzPolicy(tokenizer, executor.schemas())
    loop = AgentLoop(policy, QAEnvironment(executor.call, final_tool_names(cfg)),
                     ChatFormat(tokenizer, cfg.rollout.system_prompt, executor.schemas()),
                     RolloutConfig(max_turns=4, max_calls_per_turn=MAX_CALLS, max_tokens_per_turn=10**6,
                                   max_total_tokens=10**7), Pricing(0, 0))
    tasks = load_tasks(world, "train")

    async def batches():
        done = []
        while len(policy.written) < TURNS:
            batch = [tasks[i % len(tasks)] for i in range(len(done), len(done) + BATCH)]
            out = await loop.run_batch(batch, [0] * BATCH)
            assert [t.task_id for t in out] == [t.task_id for t in batch]  # the batch comes back whole
            done += out
        await executor.close()
        return done

    trajectories = asyncio.run(batches())
    turns = [turn for t in trajectories for turn in t.turns]
    assert len(turns) == len(policy.written) >= TURNS
    assert [t.error for t in trajectories if t.stop_reason == "error"] == []
    kinds = {"well-formed": 0, "malformed": 0}
    for turn in turns:
        well_formed = policy.written[int(re.match(r"#(\d+) ", turn.text).group(1))]
        told = turn.parse_error is not None or any(c.result.error for c in turn.calls)
        assert told != well_formed, (turn.text[:300], turn.parse_error, [c.result.text[:200] for c in turn.calls])
        kinds["well-formed" if well_formed else "malformed"] += 1
    assert min(kinds.values()) > TURNS // 4, kinds
    calls = [c.name for t in trajectories for c in t.tool_calls if c.result.error is None]
    assert {"python", "search", "math_expert", "answer"} <= set(calls)
    print(f"fuzz: {len(turns)} turns ({kinds}), {len(trajectories)} trajectories, none lost")
