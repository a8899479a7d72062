"""The scripted policy: unit checks of its pieces, and demonstrations through the real agent loop and tools
(ToolExecutor actor with the python sandbox and BM25 search, simulated experts on Ray Serve)."""

import json
import re
from collections import Counter

import pytest
from transformers import AutoTokenizer

from orchestra_rl.config import SFTConfig, final_tool_names
from orchestra_rl.data.sampler import interleave_families
from orchestra_rl.data.strategies import LOCAL_STRATEGIES
from orchestra_rl.data.world import build_world, load_tasks
from orchestra_rl.envs.qa import question_with_preference
from orchestra_rl.reward.outcome import is_correct
from orchestra_rl.rollout.parser import parse_tool_calls
from orchestra_rl.sft.demos import ScriptedRollout, generate_demos, tools_system, why_dropped
from orchestra_rl.sft.scripted import (UNKNOWN, ScriptedPolicy, demo_strategies, find_span, format_tool_call,
                                       progress, read_expert, read_python, thought, turn_thought)
from orchestra_rl.types import Task, Trajectory, Turn
from tests.helpers import free_port, policy_segments

GROUPS = 4


def test_tool_call_text_is_the_chat_templates_rendering(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    arguments = {"code": "print(12 * 34 + 5)"}
    call = {"function": {"name": "python", "arguments": arguments}}
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}], tokenize=False)
    text = format_tool_call("python", arguments)
    assert "<|im_start|>assistant\n" + text + "<|im_end|>" in rendered
    (call,) = parse_tool_calls(text).calls
    assert (call.name, call.arguments) == ("python", arguments)


def test_reading_tool_responses():
    assert find_span("It has a population of 13,694,735 and 12 cities.", "13694735") == "13,694,735"
    assert find_span("founded in 1948.", "194") is None  # whole numbers only
    assert find_span("The capital of Jaestan is Kraerthith;", "Kraerthith") == "Kraerthith"
    assert find_span("No results.", "Kraerthith") is None
    assert read_expert("The answer is 171982.") == "171982"
    assert read_expert("The answer is Mergildro Holdings.") == "Mergildro Holdings"
    assert read_expert("I don't know the answer to that question.") == UNKNOWN
    assert read_expert("Error: model 'x' failed after 3 attempt(s): TimeoutError") == UNKNOWN
    assert read_python("484052\n") == "484052"
    assert read_python("[stderr]\nNameError: x\n[exit code 1]") == UNKNOWN
    assert read_python("Error: tool 'python' timed out after 11.0 s") == UNKNOWN


def test_every_family_draws_its_tools_from_one_pool_of_the_strategies_that_solve_some_family(make_config,
                                                                                            tiny_model_path):
    cfg = make_config()
    strategies = demo_strategies(cfg)
    pool = [("python",), ("math_expert",), ("small_generalist",), ("large_generalist",), ("search",),
            ("search", "search", "python")]
    assert set(strategies) == {"arithmetic", "lookup", "multihop", "hard"}
    assert all(sorted(options) == sorted(pool) for options in strategies.values())  # no family-specific subset
    # Over len(pool) group indices every task gets every strategy once: tool choice is independent of the family.
    tasks = load_tasks(build_world(cfg.data), "train")
    policy = ScriptedPolicy.from_config(cfg, AutoTokenizer.from_pretrained(tiny_model_path), tasks)
    for family in strategies:
        of_family = [t for t in tasks if t.family == family]
        chosen = Counter(policy.for_group(g).strategy(t) for t in of_family for g in range(len(pool)))
        assert chosen == {s: len(of_family) for s in pool}, family
    with pytest.raises(ValueError, match="hard"):  # no expert left that can answer hidden facts
        demo_strategies(make_config("tools.tools.small_generalist.enabled=false",
                                    "tools.tools.large_generalist.enabled=false"))


def test_arguments_are_filled_from_the_question_and_the_responses(make_config, tiny_model_path):
    cfg = make_config()
    tasks = load_tasks(build_world(cfg.data), "train")
    policy = ScriptedPolicy.from_config(cfg, AutoTokenizer.from_pretrained(tiny_model_path), tasks)
    arithmetic, lookup, multihop = (next(t for t in tasks if t.family == f) for f in ("arithmetic", "lookup",
                                                                                      "multihop"))
    python = ("python",)
    assert policy._arguments(arithmetic, python, 0, []) == {"code": f"print({arithmetic.metadata['expression']})"}
    # nothing to compute in a lookup question, nor in a multihop one before its facts are read: the question
    assert policy._arguments(lookup, python, 0, []) == {"code": f"print({lookup.question!r})"}
    assert policy._arguments(multihop, python, 0, []) == {"code": f"print({multihop.question!r})"}
    facts = [f"It has {n}." for n in re.findall(r"\d+", multihop.metadata["expression"])]
    assert policy._arguments(multihop, ("search", "search", "python"), 2, facts) == \
        {"code": f"print({multihop.metadata['expression']})"}
    assert policy._arguments(arithmetic, ("search",), 0, []) == {"query": arithmetic.question}


THOUGHTS = {  # the question's names first, then what is asked: the words that tell the family last
    "What is the population of Feimora?": ("Feimora",
                                           "<think>Feimora: What is the population of?</think>\n"),
    "How many employees do Nalzoum Systems and Jaestan Labs have in total?": (
        "Nalzoum Systems", "Jaestan Labs",
        "<think>Nalzoum Systems; Jaestan Labs: How many employees do and have in total?</think>\n"),
    "What is 7809 * 22 + 184?": ("<think>What is 7809 * 22 + 184?</think>\n",),
}


@pytest.mark.parametrize("question", THOUGHTS)
def test_the_thought_puts_the_names_first_and_what_is_asked_last(question):
    *names, expected = THOUGHTS[question]
    task = Task(task_id="t", family="lookup", question=question, answer="1", metadata={"entities": names})
    assert thought(task) == expected


def test_sft_think_opens_the_first_turn_with_the_question_restated_for_every_family(make_config, tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tasks = load_tasks(build_world(make_config().data), "train")
    thinking = ScriptedPolicy.from_config(make_config("sft.think=true"), tokenizer, tasks)
    plain = ScriptedPolicy.from_config(make_config(), tokenizer, tasks)
    for task in (next(t for t in tasks if t.family == f) for f in ("arithmetic", "lookup", "multihop", "hard")):
        first, later = "<|im_start|>user\n" + question_with_preference(task), "\n<tool_response>\nIt has 12.\n</tool_response>"
        turn = thinking.next_turn(first)
        assert turn == thought(task) + plain.next_turn(first)  # the same call, thought first
        parsed = parse_tool_calls(turn)
        assert parsed.error is None and parsed.content == thought(task).strip()
        # Every word of the question is in the thought, its names first.
        assert parsed.content.startswith("<think>" + "; ".join(task.metadata.get("entities", [])))
        words = parsed.content.removeprefix("<think>").removesuffix("</think>").split()
        assert sorted(w.strip("?:;") for w in words) == sorted(w.strip("?") for w in task.question.split())
        assert thinking.next_turn(first + later) == plain.next_turn(first + later)  # only the first turn thinks
    # With sft.think_every_call the later turns open with the same thought, right before the call that decides
    # whether to answer.
    every = ScriptedPolicy.from_config(make_config("sft.think=true", "sft.think_every_call=true"), tokenizer, tasks)
    for task in tasks[:8]:
        first = "<|im_start|>user\n" + question_with_preference(task)
        later = "\n<tool_response>\nIt has 12.\n</tool_response>"
        for context in (first, first + later, first + later * 2):
            assert every.next_turn(context) == thought(task) + plain.next_turn(context)
    # A fixed baseline's table is judged by its calls: no thought even when sft.think is set.
    baseline = ScriptedPolicy.from_config(make_config("sft.think=true"), tokenizer, tasks, demo_strategies(make_config()))
    assert not baseline.next_turn("<|im_start|>user\n" + tasks[0].question).startswith("<think>")


LOOKUP = Task(task_id="l", family="lookup", question="What is the population of Feimora?", answer="41200",
              metadata={"entities": ["Feimora"], "attributes": ["population"]})
FEIMORA = "[1] Feimora: population and geography\nThe population of Feimora is 41,200. Its area is 3,100 km2."
MULTIHOP = Task(task_id="m", family="multihop", answer="5380",
                question="How many employees do Nalzoum Systems and Jaestan Labs have in total?",
                metadata={"entities": ["Nalzoum Systems", "Jaestan Labs"], "attributes": ["employees"] * 2,
                          "expression": "4180 + 1200"})
NALZOUM = "[1] Nalzoum Systems annual report\nWith 4,180 employees, Nalzoum Systems earned 90 million.\n" \
          "[2] People of Jaestan Labs\nStaff of Jaestan Labs include Ana Ro."  # a name without its fact
JAESTAN = "[1] Jaestan Labs annual report\nJaestan Labs had 1200 employees."
HARD = Task(task_id="h", family="hard", question="What is the clearance number of Ana Ro?", answer="512334",
            metadata={"entities": ["Ana Ro"], "attributes": ["clearance_number"]})
ANA_RO = "[1] Ana Ro\nAna Ro was born in 1980."  # a hidden fact is no passage's
ARITHMETIC = Task(task_id="a", family="arithmetic", question="What is 7809 * 22 + 184?", answer="171982",
                  metadata={"expression": "7809 * 22 + 184"})


def test_the_progress_thought_writes_each_name_with_its_fact_and_the_answer_once_a_response_holds_them():
    assert progress(LOOKUP, ["No results."]) == "<think>Feimora: ?; result: ?</think>\n"
    assert progress(LOOKUP, [FEIMORA]) == "<think>Feimora: 41200; result: 41200</think>\n"
    assert progress(MULTIHOP, [NALZOUM]) == "<think>Nalzoum Systems: 4180; Jaestan Labs: ?; result: ?</think>\n"
    assert progress(MULTIHOP, [NALZOUM, JAESTAN]) == \
        "<think>Nalzoum Systems: 4180; Jaestan Labs: 1200; result: ?</think>\n"
    assert progress(MULTIHOP, [NALZOUM, JAESTAN, "5380\n"]) == \
        "<think>Nalzoum Systems: 4180; Jaestan Labs: 1200; result: 5380</think>\n"
    # A hidden fact: the name stays unread, the expert's answer is read as the answer.
    assert progress(HARD, [ANA_RO]) == "<think>Ana Ro: ?; result: ?</think>\n"
    assert progress(HARD, ["The answer is 512334."]) == "<think>Ana Ro: ?; result: 512334</think>\n"
    assert progress(ARITHMETIC, ["The answer is 171981."]) == "<think>result: ?</think>\n"  # a wrong one
    assert progress(ARITHMETIC, ["171982\n"]) == "<think>result: 171982</think>\n"
    # With sft.think_every_call too: the first thought's line, then what has been read, in one thought.
    both = SFTConfig(think=True, think_every_call=True, think_progress=True)
    assert turn_thought(both, MULTIHOP, []) == thought(MULTIHOP)
    assert turn_thought(both, MULTIHOP, [NALZOUM]) == \
        "<think>Nalzoum Systems; Jaestan Labs: How many employees do and have in total?\n" \
        "Nalzoum Systems: 4180; Jaestan Labs: ?; result: ?</think>\n"


def test_the_counting_thought_opens_what_was_read_with_how_many_names_are_read():
    counted = SFTConfig(think=True, think_progress=True, think_count=True)
    assert turn_thought(counted, MULTIHOP, []) == thought(MULTIHOP)  # the first turn's thought is unchanged
    assert turn_thought(counted, MULTIHOP, [NALZOUM]) == \
        "<think>1 of 2 names read; Nalzoum Systems: 4180; Jaestan Labs: ?; result: ?</think>\n"
    assert turn_thought(counted, MULTIHOP, [NALZOUM, JAESTAN]) == \
        "<think>2 of 2 names read; Nalzoum Systems: 4180; Jaestan Labs: 1200; result: ?</think>\n"
    assert turn_thought(counted, LOOKUP, [FEIMORA]) == "<think>1 of 1 names read; Feimora: 41200; result: 41200</think>\n"
    assert turn_thought(counted, HARD, [ANA_RO]) == "<think>0 of 1 names read; Ana Ro: ?; result: ?</think>\n"
    assert turn_thought(counted, ARITHMETIC, ["171982\n"]) == "<think>0 of 0 names read; result: 171982</think>\n"


def test_attempts_not_kept_as_demonstrations_are_counted_by_why():
    def ended(stop_reason: str, *finish_reasons: str) -> Trajectory:
        return Trajectory("t", "lookup", 0, [], [], [], 0, [Turn("", 1, f) for f in finish_reasons], None, stop_reason)

    failed = [ended("max_turns", "tool_call", "length"), ended("max_turns", "length"), ended("token_budget", "stop")]
    assert why_dropped(0, failed) == \
        "without an answer: 2 max_turns, 1 token_budget (2 with a turn cut at rollout.max_tokens_per_turn: raise it)"
    assert why_dropped(3, [ended("error")]) == "3 answered wrong; without an answer: 1 error"
    assert why_dropped(5, []) == "5 answered wrong"  # sft.only_correct: answered, but not the gold answer


# (task, first call, responses in turn, the calls the reading rule makes: after the first, one per response)
READING_WALKS = [
    (LOOKUP, "search", [FEIMORA], [("answer", {"answer": "41,200"})]),
    (LOOKUP, "python", [f"{LOOKUP.question}\n", FEIMORA],  # python had nothing to compute: the name is searched
     [("search", {"query": LOOKUP.question}), ("answer", {"answer": "41,200"})]),
    (MULTIHOP, "search", [NALZOUM, JAESTAN, "5380\n"],  # each unread name searched, then computed
     [("search", {"query": "Jaestan Labs employees"}), ("python", {"code": "print(4180 + 1200)"}),
      ("answer", {"answer": "5380"})]),
    (MULTIHOP, "small_generalist", ["The answer is 5370."], [("answer", {"answer": "5370"})]),  # an expert's word
    (HARD, "search", [ANA_RO], [("answer", {"answer": UNKNOWN})]),  # its name searched once, nothing to compute
    (HARD, "large_generalist", ["The answer is 512334."], [("answer", {"answer": "512334"})]),
    (ARITHMETIC, "search", ["[1] Feimora\nNo number here.", "171982\n"],  # nothing to search: computed
     [("python", {"code": "print(7809 * 22 + 184)"}), ("answer", {"answer": "171982"})]),
]


@pytest.mark.parametrize("task,first,responses,calls", READING_WALKS, ids=lambda v: getattr(v, "task_id", None))
def test_read_until_answered_goes_on_by_what_is_still_unread_the_same_rule_in_every_family(task, first, responses,
                                                                                           calls):
    kinds = {"python": "python", "search": "search", "small_generalist": "llm", "large_generalist": "llm",
             "answer": "answer"}
    policy = ScriptedPolicy(None, [task], {task.family: [(first,)]}, kinds, "answer",
                            thinking=SFTConfig(think=True, think_progress=True, read_until_answered=True),
                            search_tool="search", python_tool="python")
    assert policy.next_call(task, [])[0] == first
    assert [policy.next_call(task, responses[:k]) for k in range(1, len(responses) + 1)] == calls


def test_read_until_answered_varies_only_the_first_call(make_config):
    pool = [("python",), ("math_expert",), ("small_generalist",), ("large_generalist",), ("search",)]
    assert all(options == pool for options in demo_strategies(make_config("sft.read_until_answered=true")).values())


def test_sft_think_progress_opens_every_later_turn_with_what_was_read(make_config, tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tasks = load_tasks(build_world(make_config().data), "train")
    plain = ScriptedPolicy.from_config(make_config(), tokenizer, tasks)
    reading = ScriptedPolicy.from_config(make_config("sft.think=true", "sft.think_progress=true"), tokenizer, tasks)
    tools = set(make_config().tools.tools)
    for task in (next(t for t in tasks if t.family == f) for f in ("arithmetic", "lookup", "multihop", "hard")):
        first = "<|im_start|>user\n" + question_with_preference(task)
        assert reading.next_turn(first) == thought(task) + plain.next_turn(first)
        responses = []
        for response in ("It has 12.", task.answer):
            responses.append(response)
            context = first + "".join(f"\n<tool_response>\n{r}\n</tool_response>" for r in responses)
            turn = reading.next_turn(context)
            assert turn == progress(task, responses) + plain.next_turn(context)
            words = set(re.findall(r"\w+", parse_tool_calls(turn).content.removeprefix("<think>")))
            assert not words & tools  # the thought names no tool: RL chooses them
        assert turn.startswith("<think>") and f"result: {task.answer}</think>" in turn


@pytest.fixture(scope="module")
def runtime(make_config, ray_local):
    cfg = make_config(f"serve.port={free_port()}")
    with tools_system(cfg) as rt:
        yield rt


@pytest.mark.integration
def test_scripted_trajectories_through_the_agent_loop(runtime):
    cfg = runtime.cfg
    tasks = interleave_families(load_tasks(runtime.world_dir, "train"))
    chosen = tasks[:8]  # two of each family
    assert {t.family for t in chosen} == {"arithmetic", "lookup", "multihop", "hard"}
    scripted = ScriptedRollout(cfg, runtime, tasks)
    trajectories = scripted.run([(task, g) for task in chosen for g in range(GROUPS)])
    tokenizer = scripted.chat.tokenizer
    options = demo_strategies(cfg)
    by_task: dict[str, set] = {}
    for tr in trajectories:
        task = next(t for t in chosen if t.task_id == tr.task_id)
        # Every turn is one well-formed call; the last one answers: the answer tool, or an expert whose reply is
        # the final answer (final_answer: true in conf/tools).
        assert tr.stop_reason == "answer" and tr.final_answer is not None
        assert all(t.parse_error is None and t.finish_reason == "tool_call" and len(t.calls) == 1 for t in tr.turns)
        names = [t.calls[0].name for t in tr.turns]
        assert names[-1] in final_tool_names(cfg)
        strategy = tuple(names[:-1]) if names[-1] == "answer" else tuple(names)
        assert strategy == scripted.policy.for_group(tr.group_index).strategy(task)
        assert strategy in options[task.family]
        by_task.setdefault(task.task_id, set()).add(strategy)
        # The loss mask covers exactly the scripted turns: one run of mask 1 per turn, holding that turn's tokens,
        # which are the tokenisation of the call's text; logprobs are 0 everywhere.
        segments = policy_segments(tr)
        assert len(segments) == len(tr.turns)
        for segment, turn in zip(segments, tr.turns):
            call = turn.calls[0]
            assert segment == tokenizer.encode(format_tool_call(call.name, call.arguments), add_special_tokens=False)
            assert tokenizer.decode(segment) == turn.text
        assert set(tr.logprobs) == {0.0} and sum(tr.loss_mask) == sum(t.num_tokens for t in tr.turns)
        assert tr.token_ids[:tr.prompt_length] == scripted.chat.prompt_ids(question_with_preference(task))
        # Local tools' answers are read from their responses, exact where the tool suits the family; an expert's
        # reply is the answer itself.
        if strategy == LOCAL_STRATEGIES[task.family][0] and task.family != "hard":
            assert is_correct(tr.final_answer, task.answer, task.family), (task.question, strategy, tr.final_answer)
        elif strategy in (("python",), ("search",), ("search", "search", "python")):
            assert not is_correct(tr.final_answer, task.answer, task.family) or task.family == "arithmetic"
        else:
            assert tr.final_answer == tr.tool_calls[-1].result.text
            assert read_expert(tr.final_answer) != UNKNOWN
        if strategy == ("python",):  # the expression where the question has one, else the question printed
            expected = task.metadata["expression"] if task.family == "arithmetic" else repr(task.question)
            assert tr.tool_calls[0].arguments == {"code": f"print({expected})"}
    # Each task's group spreads over its family's strategies (the rotation gives min(GROUPS, options) of them).
    for task in chosen:
        assert len(by_task[task.task_id]) == min(GROUPS, len(options[task.family]))


@pytest.mark.integration
def test_generate_demos_covers_every_family_and_writes_jsonl(runtime, tmp_path):
    demos = generate_demos(runtime.cfg, runtime, 12, out_path=tmp_path / "demos.jsonl")
    assert len(demos) == 12 and {d.family for d in demos} == {"arithmetic", "lookup", "multihop", "hard"}
    rows = [json.loads(line) for line in (tmp_path / "demos.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["token_ids"], r["loss_mask"]) for r in rows] == \
        [(d.task_id, d.token_ids, d.loss_mask) for d in demos]
    correct = generate_demos(runtime.cfg, runtime, 8, only_correct=True)
    gold = {t.task_id: t.answer for t in load_tasks(runtime.world_dir, "train")}
    assert len(correct) == 8 and all(is_correct(d.final_answer, gold[d.task_id], d.family) for d in correct)
