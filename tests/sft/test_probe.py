"""The probes' pieces (sft/probe.py, sft/after_search.py); the probe of a real SFT checkpoint is checked in
test_sft.py."""

import numpy as np

from orchestra_rl.sft.after_search import own_thought
from orchestra_rl.sft.probe import separability, state_parts


def test_separability_is_one_where_the_family_is_written_in_the_state_and_chance_where_it_is_not():
    rng = np.random.default_rng(0)
    labels = ["hard", "lookup"] * 50
    noise = rng.normal(size=(100, 16))
    planted = noise + np.array([[3.0 if label == "hard" else -3.0] + [0.0] * 15 for label in labels])
    assert separability(planted, labels) == 1.0
    unrelated = separability(noise, labels)
    assert 0.3 < unrelated < 0.7, unrelated


def test_separability_needs_every_label_in_every_fold():
    states = np.zeros((12, 4))
    assert separability(states, ["a"] * 8 + ["b"] * 4) is None  # 4 examples cannot fill 5 folds
    assert separability(states, ["a"] * 12) is None  # one label: nothing to tell apart


def test_state_parts_are_the_shared_mean_the_families_offsets_and_the_spread_within():
    # Every state is a shared (3, 4) plus its family's offset (+-1 on the third axis) plus +-0.5 on the fourth.
    labels = ["hard", "hard", "lookup", "lookup"]
    states = np.array([[3.0, 4.0, 1.0, 0.5], [3.0, 4.0, 1.0, -0.5], [3.0, 4.0, -1.0, 0.5], [3.0, 4.0, -1.0, -0.5]])
    assert state_parts(states, labels) == {"common": 5.0, "family": 1.0, "spread": 0.5}


def test_the_after_search_probe_keeps_the_policys_own_thought_and_nothing_after_it():
    turn = '<think>Feimora: 41200; result: 41200</think>\n<tool_call>\n{"name": "answer"}\n</tool_call>'
    assert own_thought(turn) == "<think>Feimora: 41200; result: 41200</think>\n"
    assert own_thought('<tool_call>\n{"name": "search"}\n</tool_call><think>late</think>') == ""  # none first
    assert own_thought("<think>cut off before its end") == ""
