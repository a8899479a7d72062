"""The agent loop through the real actor system: a RolloutWorker (vLLM AsyncLLM) and ToolExecutor actors."""

import asyncio

import pytest
import ray
from transformers import AutoTokenizer

from orchestra_rl.data.world import load_tasks
from orchestra_rl.envs.qa import question_with_preference
from orchestra_rl.rollout.agent_loop import TurnBarrier
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.system import System
from tests.helpers import free_port, policy_segments


@pytest.fixture(scope="module")
def runtime(make_config, ray_local):
    cfg = make_config("tools.tools.python.enabled=false", "rollout.max_turns=3", "rollout.max_tokens_per_turn=80",
                      f"serve.port={free_port()}", "serve.latency_scale=0.01")
    with System(cfg) as rt:
        yield rt


def replay(trajectory, chat: ChatFormat, task) -> str:
    """The conversation the trajectory claims to be, rendered by the chat template from its turn records and
    the policy's own token segments."""
    said = [chat.tokenizer.decode(seg) for seg in policy_segments(trajectory)]
    messages = [{"role": "system", "content": chat.system_prompt}, {"role": "user", "content": question_with_preference(task)}]
    for turn, text in zip(trajectory.turns[:-1], said):
        # a turn the policy ended itself includes its <|im_end|>, which the template writes after the content
        messages.append({"role": "assistant", "content": text.removesuffix(chat.tokenizer.eos_token)})
        responses = [f"Error: {turn.parse_error}"] if turn.parse_error else [c.result.text for c in turn.calls]
        messages += [{"role": "tool", "content": r} for r in responses]
    text = chat.tokenizer.apply_chat_template(messages, tools=chat.tool_schemas, tokenize=False,
                                              add_generation_prompt=True)
    return text + said[-1]


@pytest.mark.integration
def test_multi_turn_tokens_mask_and_logprobs_are_exact(runtime):
    tasks = load_tasks(runtime.world_dir, "test")[:3]
    trajectories = runtime.rollout.rollout(tasks, group_size=2)
    tokenizer = AutoTokenizer.from_pretrained(runtime.model_path)
    chat = ChatFormat(tokenizer, runtime.cfg.rollout.system_prompt, runtime.tool_schemas)
    assert [(t.task_id, t.group_index) for t in trajectories] == [(task.task_id, g) for task in tasks for g in (0, 1)]
    by_id = {t.task_id: t for t in tasks}
    for tr in trajectories:
        task = by_id[tr.task_id]
        assert len(tr.token_ids) == len(tr.logprobs) == len(tr.loss_mask) <= runtime.cfg.rollout.max_total_tokens
        assert tr.token_ids[:tr.prompt_length] == chat.prompt_ids(question_with_preference(task))
        assert tokenizer.decode(tr.token_ids) == replay(tr, chat, task)
        # Exactly the sampled tokens carry mask 1, one run per turn; context tokens carry logprob 0.
        assert [len(seg) for seg in policy_segments(tr)] == [t.num_tokens for t in tr.turns]
        assert all(lp == 0.0 for lp, m in zip(tr.logprobs, tr.loss_mask) if not m)
        assert tr.stop_reason in ("answer", "max_turns", "token_budget") and len(tr.turns) <= 3
        # The untrained policy writes no valid call: every turn is answered with an error, and the loop goes on.
        assert all(t.parse_error for t in tr.turns) and tr.final_answer is None
        assert tr.policy_cost_usd > 0 and tr.cost_usd == tr.policy_cost_usd
    # The recorded sampling logprobs are the engine's own scores of those tokens in that context (temperature 1):
    # what the learner's importance ratio needs.
    tr = trajectories[0]
    scored = ray.get(runtime.rollout.workers[0].prompt_logprobs.remote(tr.token_ids))
    for i, (lp, m) in enumerate(zip(tr.logprobs, tr.loss_mask)):
        if m:
            assert abs(scored[i - 1] - lp) < 1e-3, i


async def test_turn_barrier_releases_when_all_remaining_arrive():
    barrier = TurnBarrier(3)
    order = []

    async def party(name: str, turns: int) -> None:
        for turn in range(turns):
            order.append((name, turn))
            await barrier.wait()
        barrier.leave()

    await asyncio.wait_for(asyncio.gather(party("a", 1), party("b", 3), party("c", 2)), timeout=5)
    # Nobody starts turn k+1 before everyone still running has finished turn k.
    assert order[:3] == [("a", 0), ("b", 0), ("c", 0)]
    assert set(order[3:5]) == {("b", 1), ("c", 1)} and order[5] == ("b", 2)
