"""Copy pretraining of the tiny base model: the drills teach copying and no routing; the stage trains the model
the build saves, and what it did is recorded beside it."""

import json
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestra_rl.metrics import faithful_call
from orchestra_rl.config import DataConfig
from orchestra_rl.data.world import build_world, load_world
from orchestra_rl.models.pretrain import (CHAIN_STEP, DRILL_ARGUMENT, READING_STEPS, DrillMaker, ReadingDrillMaker,
                                          _batch, _logits, context_ids, copy_accuracy, encode_drill, held_out_drills)
from orchestra_rl.models.tiny import PRETRAIN_FILE, build_tiny_model, chat_context, tiny_model_dir
from orchestra_rl.rollout.chat import ChatFormat
from orchestra_rl.tools.registry import config_schemas

TOOLS = ["python", "search", "math_expert", "small_generalist", "large_generalist", "answer"]


def kind_of(question: str) -> str:
    if question.startswith("What is") and any(c.isdigit() for c in question):
        return "arithmetic"
    return "pair" if " and " in question or " than " in question or " after " in question else "entity"


def test_drills_copy_from_their_question_and_choose_the_tool_independently_of_it():
    maker = DrillMaker(TOOLS, seed=0)
    drills = [maker.drill() for _ in range(3000)]
    by_kind = {kind: Counter(d.tool for d in drills if kind_of(d.question) == kind)
               for kind in ("arithmetic", "entity", "pair")}
    for kind, tools in by_kind.items():  # every kind of question goes to every tool about equally often
        n = sum(tools.values())
        assert set(tools) == set(TOOLS) and all(abs(c / n - 1 / len(TOOLS)) < 0.05 for c in tools.values()), kind
    for d in drills:
        ((argument, value),) = d.arguments.items()
        assert argument == DRILL_ARGUMENT.get(d.tool, "question")
        if d.tool == "search" or (d.tool == "python" and kind_of(d.question) == "arithmetic"):
            assert faithful_call(d.tool, d.arguments, d.question, []), d  # the fidelity metric's own judgement
        elif d.tool == "python":  # nothing to compute: the program prints the question, as the demonstrator's
            assert value == f"print({d.question!r})"
        elif argument == "answer":
            assert value in d.question
        else:
            assert value == d.question
    assert DrillMaker(TOOLS, seed=0).drill() == drills[0]  # seeded
    assert DrillMaker(TOOLS, seed=1).drill() != drills[0]


def test_reading_drills_use_what_the_tools_said_about_worlds_of_their_own(tmp_path):
    maker = ReadingDrillMaker(seed=0, worlds=2)
    drills = [maker.drill() for _ in range(400)]
    assert Counter(d.tool for d in drills).keys() == {"answer", "python", "search"}
    for d in drills:
        said = [m["content"] for m in d.context if m["role"] == "tool"]
        assert said and d.context[0]["role"] == "user"  # a question, then calls and what they returned
        if d.tool == "answer":  # the answer is read out of the last response (a passage, or python's output)
            assert d.arguments["answer"].replace(",", "") in said[-1].replace(",", ""), d
        elif d.arguments != {"code": f"print({d.question!r})"}:  # (a search missed a fact: nothing to compute)
            # the second search of a multihop chain, or its python call on the two passages' numbers
            assert faithful_call(d.tool, d.arguments, d.question, said), d
    passages = [d for d in drills if d.tool == "answer" and "[1]" in d.context[-1]["content"]]
    assert len(passages) > 70  # lookups (a quarter of the drills): the fact is one of several in three passages
    # Steps are drilled by READING_STEPS' weights: the multihop chain's python call (after two searches) most.
    chains = [d for d in drills if d.tool == "python"]
    assert all([m["role"] for m in d.context] == ["user", "assistant", "tool", "assistant", "tool"] for d in chains)
    expected = READING_STEPS[CHAIN_STEP] / sum(READING_STEPS.values())
    assert abs(len(chains) / len(drills) - expected) < 0.06, len(chains)
    assert maker.drill(CHAIN_STEP).tool == "python"
    assert ReadingDrillMaker(seed=0, worlds=1).drill() == ReadingDrillMaker(seed=0, worlds=1).drill()  # seeded
    # Their entities are none of a task world's (seeds 0..9), and the held-out stream's none of the trained ones'.
    def names(world):
        return {e["name"] for kind in world.values() for e in kind}
    task_worlds = set().union(*(names(load_world(build_world(DataConfig(seed=s, cache_dir=str(tmp_path)))))
                                for s in range(10)))
    trained = {d.question for d in drills}
    held_out = {d.question for d in (ReadingDrillMaker(seed=1, worlds=1).drill() for _ in range(200))}
    assert not any(n in q for n in task_worlds for q in trained | held_out)
    assert not trained & held_out


def test_a_pretrained_build_is_its_own_model_folder_trained_on_drills(make_config):
    full = make_config("model.pretrain_steps=30", "model.pretrain_lr=3e-3", "model.pretrain_reading_share=0.3")
    cfg, context, plain = full.model, chat_context(full), make_config("model.pretrain_steps=0").model
    assert tiny_model_dir(cfg, context) != tiny_model_dir(plain) != tiny_model_dir(make_config().model)
    other_tools = make_config("model.pretrain_steps=30", "model.pretrain_lr=3e-3", "model.pretrain_reading_share=0.3",
                              "tools.tools.python.enabled=false")
    assert tiny_model_dir(cfg, chat_context(other_tools)) != tiny_model_dir(cfg, context) != tiny_model_dir(cfg)
    path = build_tiny_model(cfg, context)
    report = json.loads((path / PRETRAIN_FILE).read_text())
    assert report["steps"] == 30 and report["held_out_drills"] == 256 and report["reading_share"] == 0.3
    assert 0 <= report["reading_accuracy"] <= 1  # on reading drills about a world never trained on
    assert report["loss_last"] < report["loss_first"]  # 30 steps learn the call format, not yet the copying
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    untrained = AutoModelForCausalLM.from_pretrained(build_tiny_model(plain))
    assert not torch.equal(model.model.embed_tokens.weight, untrained.model.embed_tokens.weight)
    assert report["context_tokens"] == len(context_ids(tokenizer, context)) > 500  # the system turn with 6 tools
    # The recorded accuracies are the saved model's, greedily, on the held-out streams (seed + 1) read after the
    # system turn: distinct drills.
    held_out = held_out_drills(list(cfg.word_tokens), cfg.seed, report["held_out_drills"], reading=True)
    for kind, drills in held_out.items():
        assert len({(d.question, json.dumps(d.arguments)) for d in drills}) > 0.8 * len(drills), kind
        assert copy_accuracy(model, tokenizer, drills, context) == report[f"{kind}_accuracy"]


def test_drills_are_read_after_the_system_turn_an_episodes_prompt_opens_with(tiny_model_path, make_config):
    cfg = make_config()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    prefix = context_ids(tokenizer, chat_context(cfg))
    chat = ChatFormat(tokenizer, cfg.rollout.system_prompt, config_schemas(cfg.tools))
    drills = [DrillMaker(TOOLS, seed=0).drill(), ReadingDrillMaker(seed=0, worlds=1).drill()]
    copy_drill = drills[0]
    prompt = tokenizer.encode(copy_drill.prompt(tokenizer), add_special_tokens=False)
    assert prefix + prompt == chat.prompt_ids(copy_drill.question)  # token for token an episode's first prompt
    # The system turn's keys and values, computed once for the batch, give the logits of reading it whole.
    ids, _, _ = _batch(tokenizer, drills)
    with torch.no_grad():
        batched = _logits(model, prefix, ids)
        for row, drill in enumerate(drills):
            own = encode_drill(tokenizer, drill)[0]
            whole = model(torch.tensor([prefix + own])).logits[0, len(prefix):]
            assert torch.allclose(batched[row, :len(own)], whole, atol=1e-4)


def test_the_loss_falls_on_the_call_and_a_tool_name_only_where_it_was_drawn_at_random(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    for drill in (DrillMaker(TOOLS, seed=0).drill(), ReadingDrillMaker(seed=0, worlds=1).drill()):
        ids, loss, judged = encode_drill(tokenizer, drill)
        prompt = drill.prompt(tokenizer)
        assert prompt == tokenizer.apply_chat_template(list(drill.context), tokenize=False,
                                                       add_generation_prompt=True)
        assert ids == tokenizer.encode(prompt + drill.completion(), add_special_tokens=False)  # tokenised whole
        judged_text = tokenizer.decode([t for t, m in zip(ids, judged) if m])
        # the tool name is not judged (an answer call's argument key may still spell it)
        assert f'"name": {json.dumps(drill.tool)}' not in judged_text and json.dumps(drill.arguments) in judged_text
        loss_text = tokenizer.decode([t for t, m in zip(ids, loss) if m])
        if drill.random_tool:  # a copy drill: the whole call (its tool is noise, a uniform prior)
            assert loss_text == drill.completion()
        else:  # a reading drill: its tool follows the plan, and training on it would teach routing
            assert loss == judged
