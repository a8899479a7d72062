"""Packing TrainSamples into micro-batches and splitting a batch over ranks."""

import pytest
import torch

from orchestra_rl.learner.batching import collate, micro_batches, pack, split_across_ranks
from orchestra_rl.types import TrainSample


def sample(n: int, policy: tuple[int, int] = (2, 4), advantage: float = 0.5, reward: float = 1.0) -> TrainSample:
    mask = [1 if policy[0] <= i < policy[1] else 0 for i in range(n)]
    return TrainSample(list(range(1, n + 1)), mask, [-0.1 * m for m in mask], advantage=advantage, reward=reward)


def test_split_balances_tokens_deterministically_and_covers_every_sample():
    samples = [sample(n) for n in (50, 10, 40, 30, 20, 10, 35)]
    ranks = split_across_ranks(samples, 3)
    assert sorted(i for r in ranks for i in r) == list(range(len(samples)))
    loads = [sum(len(samples[i].token_ids) for i in r) for r in ranks]
    assert max(loads) - min(loads) <= 10  # 195 tokens over 3 ranks: 65 ± 5
    assert split_across_ranks(samples, 3) == ranks and all(r == sorted(r) for r in ranks)
    # Fewer samples than ranks: the extra ranks get none (and will run empty micro-batches).
    assert split_across_ranks(samples[:1], 2) == [[0], []]


def test_pack_keeps_each_micro_batch_within_the_token_budget():
    samples = [sample(n) for n in (30, 8, 20, 12, 100, 16)]
    groups = pack(samples, 40)
    assert sorted(i for g in groups for i in g) == list(range(len(samples)))
    for g in groups:
        padded = len(g) * max(len(samples[i].token_ids) for i in g)
        assert padded <= 40 or len(g) == 1  # an over-long sample goes alone
    assert [4] in groups


def test_collate_pads_right_and_places_advantage_and_reward_on_policy_tokens():
    samples = [sample(6, (2, 4), advantage=0.5, reward=2.0), sample(4, (1, 3), advantage=-1.0, reward=0.0)]
    mb = collate(samples, [0, 1], pad_token_id=7)
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7, 7]]
    assert mb.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert mb.loss_mask.tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert mb.advantages.tolist() == [[0, 0, 0.5, 0.5, 0, 0], [0, -1, -1, 0, 0, 0]]
    assert mb.token_rewards.tolist() == [[0, 0, 0, 2.0, 0, 0], [0] * 6]  # on the last policy token
    assert torch.allclose(mb.old_logprobs, -0.1 * mb.loss_mask)
    assert (mb.num_tokens, mb.num_sequences, mb.indices) == (4, 2, [0, 1])


def test_micro_batches_pad_with_empty_ones_to_the_common_count():
    samples = [sample(10), sample(10)]
    batches = micro_batches(samples, 100, count=3)
    assert len(batches) == 3 and batches[0].indices == [0, 1]
    for empty in batches[1:]:
        assert empty.indices == [] and empty.num_tokens == 0 and empty.num_sequences == 0
        assert empty.input_ids.shape == (1, 1) and empty.attention_mask.tolist() == [[1]]
    assert len(micro_batches([], 100, count=2)) == 2
    with pytest.raises(ValueError, match="micro-batches"):
        micro_batches(samples, 10, count=1)


def test_collate_names_a_malformed_sample():
    bad = TrainSample([1, 2, 3], [0, 1], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="train sample 1"):
        collate([sample(4), bad], [0, 1])
