"""The environment role driven by the real agent loop on a real vLLM engine: per-trajectory state, a user who
speaks between turns, exact tokens, and the episode released whether it ends or fails.

`CounterWorld` is a minimal stateful world written for this test (the shape of a τ²-style domain: a database,
one write tool, a user): each episode owns a counter, the `increment` tool adds to it, the user answers every
turn and ends the conversation after two.
"""

import asyncio

import pytest
import pytest_asyncio
from transformers import AutoTokenizer

from orchestra_rl.config import EngineConfig, RolloutConfig
from orchestra_rl.envs.base import Environment, Episode, Observation
from orchestra_rl.rollout.agent_loop import AgentLoop
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.rollout.engine import PolicyEngine
from orchestra_rl.rollout.parser import tool_call_regex
from orchestra_rl.tools.base import Pricing
from orchestra_rl.types import Task, ToolCallRecord, ToolResult
from tests.helpers import policy_segments

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

INCREMENT = {"type": "function", "function": {
    "name": "increment", "description": "Add to the counter.",
    "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}}}
USER_TURNS = 2


class CounterWorld(Environment):
    def __init__(self, failing_group_index: int | None = None):
        self.failing_group_index, self.episodes, self.closed = failing_group_index, [], 0

    async def reset(self, task, group_index):
        episode = CounterEpisode(self, task.question, fails=group_index == self.failing_group_index)
        self.episodes.append(episode)
        return episode


class CounterEpisode(Episode):
    def __init__(self, world: CounterWorld, opening: str, fails: bool):
        self.world, self.opening, self.db, self.fails = world, opening, {"count": 0}, fails

    async def step(self, turn_index, message, calls):
        if self.fails and turn_index == 1:
            raise RuntimeError("the world broke")
        await asyncio.sleep(0.01)  # world work is awaited: other trajectories run meanwhile
        records = []
        for call in calls:
            self.db["count"] += 1
            records.append(ToolCallRecord(turn_index, call.name, call.arguments, ToolResult(str(self.db["count"]))))
        done = turn_index + 1 == USER_TURNS
        return Observation(records, user_message=None if done else f"Now {self.db['count']}. Once more, please.",
                           done=done)

    async def close(self):
        self.world.closed += 1


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tiny_model_path):
    engine = PolicyEngine(tiny_model_path, EngineConfig(max_model_len=1024))
    yield engine
    engine.shutdown()


def agent_loop(engine, tiny_model_path, world) -> tuple[AgentLoop, ChatFormat]:
    chat = ChatFormat(AutoTokenizer.from_pretrained(tiny_model_path), "SYS", [INCREMENT])
    # 128 tokens per turn: the guided call (at most 32 argument characters) always closes, so no turn ends on a
    # truncated call (a parse error the episode never sees would shift its turns).
    cfg = RolloutConfig(max_turns=4, max_tokens_per_turn=128, max_total_tokens=1000)
    return AgentLoop(engine, world, chat, cfg, Pricing(1.0, 1.0), guided_regex=tool_call_regex([INCREMENT])), chat


async def test_each_rollout_has_its_own_state_and_the_user_speaks_between_turns(engine, tiny_model_path):
    world = CounterWorld()
    loop, chat = agent_loop(engine, tiny_model_path, world)
    task = Task(task_id="t", family="counter", question="Count for me.", answer="")
    group = await loop.run_batch([task] * 4, [0, 1, 2, 3])
    # Four concurrent episodes of one task: each counted from 0 on its own copy (a shared one would interleave
    # and reach 8); all released.
    for tr in group:
        assert [c.result.text for c in tr.tool_calls] == [str(i + 1) for i in range(len(tr.tool_calls))]
        assert len(tr.tool_calls) >= USER_TURNS
    assert len({id(e.db) for e in world.episodes}) == 4 and world.closed == 4
    for tr in group:
        assert tr.stop_reason == "done" and tr.final_answer is None and len(tr.turns) == USER_TURNS
        # Exact tokens in a multi-party episode: the template's rendering of system, user, assistant, tool and
        # user messages, with the policy's own sampled tokens (mask 1) as the assistant turns.
        said = [chat.tokenizer.decode(seg) for seg in policy_segments(tr)]
        first = tr.turns[0].calls
        messages = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Count for me."},
                    {"role": "assistant", "content": said[0]}, *({"role": "tool", "content": c.result.text}
                                                                 for c in first),
                    {"role": "user", "content": f"Now {first[-1].result.text}. Once more, please."}]
        rendered = chat.tokenizer.apply_chat_template(messages, tools=[INCREMENT], tokenize=False,
                                                      add_generation_prompt=True)
        assert chat.tokenizer.decode(tr.token_ids) == rendered + said[1]
        assert [len(seg) for seg in policy_segments(tr)] == [t.num_tokens for t in tr.turns]


async def test_a_failing_episode_ends_alone_and_is_released(engine, tiny_model_path):
    world = CounterWorld(failing_group_index=0)
    loop, _ = agent_loop(engine, tiny_model_path, world)
    task = Task(task_id="t", family="counter", question="Count for me.", answer="")
    failed, finished = await loop.run_batch([task, task], [0, 1])
    assert failed.stop_reason == "error" and failed.error == "RuntimeError: the world broke"
    assert len(failed.turns) == 2 and failed.num_policy_tokens > 0  # the trajectory so far is kept, for the record
    assert finished.stop_reason == "done" and finished.error is None  # the rest of the batch is unaffected
    assert world.closed == 2
