"""SFT end to end: scripted demonstrations through the real tools, then Ray Train (2 gloo workers, FSDP2)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestra_rl.cli import main
from orchestra_rl.models.tiny import PRETRAIN_FILE
from orchestra_rl.sft.replay import replay_samples
from orchestra_rl.data.world import build_world, load_tasks
from orchestra_rl.sft.after_search import contexts_after_search
from orchestra_rl.sft.probe import prompts_to_first_tool_name
from orchestra_rl.tools.search import SearchTool
from orchestra_rl.sft.train import (DEMOS_FILE, DRILLS_FILE, ENV_DEMOS_FILE, METRICS_FILE, PROBE_FILE,
                                    masked_nll_sum)
from tests.conftest import SFT_EPOCHS, SFT_OVERRIDES, SFT_REPLAY_DRILLS


def test_masked_nll_counts_only_policy_tokens(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ids, mask = [5, 6, 7, 8, 9], [0, 0, 1, 1, 0]
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = -(logp[1, 7] + logp[2, 8])  # targets 7 and 8, predicted from positions 1 and 2
    assert masked_nll_sum(model, ids, mask, torch.device("cpu")).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.integration
@pytest.mark.e2e
def test_sft_learns_the_tool_call_format(sft_run, make_config):
    out, checkpoint = Path(sft_run[0]), sft_run[1]
    assert checkpoint == str(out / "checkpoint")
    assert len((out / DEMOS_FILE).read_text().splitlines()) == 128
    # The default world's function-call domain demonstrates itself: every train task's golden replay, graded 1.0.
    replays = [json.loads(line) for line in (out / ENV_DEMOS_FILE).read_text().splitlines()]
    assert len(replays) == 36 and all(r["env"] == "orders" and r["env_outcome"] == 1.0 for r in replays)

    history = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, SFT_EPOCHS + 1))
    # Each epoch trains on every demonstration, golden replay and replayed drill of the base (180 samples: whole
    # batches of 4), and on their policy tokens only.
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    masks = [json.loads(line)["loss_mask"] for f in (DEMOS_FILE, ENV_DEMOS_FILE)
             for line in (out / f).read_text().splitlines()]
    masks += [mask for _, mask in replay_samples(make_config(*SFT_OVERRIDES), tokenizer, SFT_REPLAY_DRILLS)]
    assert len(masks) % 4 == 0
    assert all(h["policy_tokens"] == sum(sum(mask[1:]) for mask in masks) for h in history)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0], losses

    # The base's held-out drills re-judged after SFT, beside the base's own verdict on the same drills.
    base = json.loads(Path(checkpoint, PRETRAIN_FILE).read_text())
    kept = json.loads((out / DRILLS_FILE).read_text())
    assert set(kept) == {"copy_accuracy", "reading_accuracy", "chain_accuracy"}
    for kind, verdict in kept.items():
        assert verdict["base"] == base[kind] and 0.0 <= verdict["after_sft"] <= 1.0

    # The family probe at the first tool name, over every QA task of the world (4 families of 8), read where the
    # demonstrations name their first tool: their tokens up to the name are the probe's prompt.
    probe = json.loads((out / PROBE_FILE).read_text())
    world = build_world(make_config().data)
    tasks = {t.task_id: t for split in ("train", "test") for t in load_tasks(world, split)}
    assert probe["tasks"] == len(tasks) == 32 and probe["families"] == dict.fromkeys(
        ["arithmetic", "hard", "lookup", "multihop"], 8)
    assert probe["chance"] == 0.25 and 0.0 <= probe["accuracy"] <= 1.0
    assert set(probe["pairs"]) == {"arithmetic/hard", "arithmetic/lookup", "arithmetic/multihop", "hard/lookup",
                                   "hard/multihop", "lookup/multihop"}
    assert all(0.0 <= v <= 1.0 for v in probe["pairs"].values())
    # The state there is mostly what every task shares (the same tokens right before the name).
    assert probe["state"]["common"] > probe["state"]["family"] > 0 and probe["state"]["spread"] > 0
    for mix in probe["first_tool"].values():  # the SFT policy writes a tool name there: most of its probability
        assert 0.5 < sum(mix.values()) <= 1.0 + 1e-6, mix
    # After a lookup's search: the fact is in the search's response for every lookup of the world (BM25 over the
    # world's own passages), and each lookup's next call is counted once.
    found = probe["after_search"]
    assert found["tasks"] == 8 and found["fact_in_response"] == 1.0
    tool_words = set(probe["first_tool"]["lookup"])
    assert sum(found["next_tool"].values()) == 8 and set(found["next_tool"]) <= tool_words | {"none"}
    assert 0.0 <= found["right_as_is"] <= 1.0 and 0.0 <= found["right_forced"] <= 1.0
    assert sum(sum(a["next_tool"].values()) for a in found["by_attribute"].values()) == 8
    assert found["multihop"]["tasks"] == 8 and sum(found["multihop"]["next_tool"].values()) == 8
    # At the next call's tool name: the probe of lookup vs multihop, and the policy's tool distribution there.
    second = found["next_tool_name"]
    assert 0.0 <= second["lookup/multihop"] <= 1.0 and second["state"]["common"] > second["state"]["family"] > 0
    assert set(second["tool"]) == {"lookup", "multihop"}
    assert all(set(mix) == tool_words and 0.5 < sum(mix.values()) <= 1.0 + 1e-6 for mix in second["tool"].values())
    # Its context is a search-first lookup demonstration's, up to the policy's second turn.
    cfg = make_config()
    search = SearchTool("search", cfg.tools.tools["search"], world)
    demos = [json.loads(line) for line in (out / DEMOS_FILE).read_text().splitlines()]
    searched = [d for d in demos if d["family"] == "lookup" and d["strategy"] == "search"]
    assert searched
    for demo in searched:
        ((ids, response),) = contexts_after_search(cfg, tokenizer, [tasks[demo["task_id"]]], search, "search")
        assert demo["token_ids"][:len(ids)] == ids and response in tokenizer.decode(ids)
        assert demo["loss_mask"][len(ids)] == 1  # the next token is the policy's own: its second turn

    rows = [json.loads(line) for line in (out / DEMOS_FILE).read_text().splitlines()[:16]]
    prompts = prompts_to_first_tool_name(make_config(), tokenizer, [tasks[row["task_id"]] for row in rows])
    for row, ids in zip(rows, prompts):
        assert row["token_ids"][:len(ids)] == ids
        named = tokenizer.decode(row["token_ids"][len(ids)])
        assert named in probe["first_tool"]["lookup"]  # a tool's name: the probe's distribution covers it
        if row["strategy"] != "(none)":  # a demonstration that ended without an answer has no strategy
            assert named == row["strategy"].split(" -> ")[0], row["strategy"]

    # An ordinary HF directory: transformers loads it, and the policy now opens its turn with a tool call.
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert Path(checkpoint, "tokenizer.json").is_file() and Path(checkpoint, "model.safetensors").is_file()
    row = json.loads((out / DEMOS_FILE).read_text().splitlines()[0])  # a training prompt
    prompt = row["token_ids"][:row["loss_mask"].index(1)]
    generated = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(generated[0, len(prompt):], skip_special_tokens=False)
    assert text.startswith("<tool_call>"), text


@pytest.mark.integration
def test_the_probe_command_reads_a_checkpoint_as_the_sft_did(sft_run, sized_overrides, tmp_path, capsys):
    out, checkpoint = Path(sft_run[0]), sft_run[1]
    found = tmp_path / "probe.json"
    assert main(["probe", f"model.path={checkpoint}", *sized_overrides, "--out", str(found)]) == 0
    # Greedy decoding and a seeded probe: the same findings the SFT wrote beside the checkpoint.
    assert json.loads(found.read_text()) == json.loads((out / PROBE_FILE).read_text())
    printed = capsys.readouterr().out
    assert "family probe at the first tool name (32 tasks" in printed and "after a lookup's search (8 lookups" in printed
    # A world without QA tasks, or a policy without tool-name tokens, has nothing to probe: one line, exit 2.
    assert main(["probe", f"model.path={checkpoint}", *sized_overrides, "env=[orders]"]) == 2
    assert main(["probe", f"model.path={checkpoint}", *sized_overrides, "model.word_tokens=[]",
                 "model.pretrain_steps=0"]) == 2
    assert capsys.readouterr().err.count("probe: needs the QA world") == 2
