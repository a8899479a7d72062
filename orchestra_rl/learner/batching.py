"""TrainSamples → right-padded micro-batches, and the split of a batch over data-parallel ranks.

Two rules keep N learners computing the gradient of one: every rank runs the same number of micro-batches (FSDP2's
all-gathers and reduce-scatters are collective, so a rank that stops early hangs the others; short ranks run empty,
all-masked micro-batches), and the loss is normalised by batch-wide counts (`BatchTotals`), never per micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orchestra_rl.types import TrainSample


@dataclass
class MicroBatch:
    """Right-padded tensors of a few samples, all [B, T] and aligned with token ids (position i = token i)."""

    input_ids: torch.Tensor  # long
    attention_mask: torch.Tensor  # long, 1 on real tokens
    loss_mask: torch.Tensor  # float, 1 on policy tokens
    old_logprobs: torch.Tensor  # behaviour logprobs, 0 off the policy tokens
    advantages: torch.Tensor  # GRPO: each sample's advantage broadcast over its policy tokens
    token_rewards: torch.Tensor  # PPO: each sample's reward on its last policy token, 0 elsewhere
    indices: list[int]  # each row's position in the list the batch was built from (empty rows: none)

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_sequences(self) -> int:
        """Rows with at least one policy token (what a sequence-mean loss averages over)."""
        return int((self.loss_mask.sum(-1) > 0).sum())

    def to(self, device: torch.device) -> "MicroBatch":
        tensors = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return MicroBatch(**tensors, indices=self.indices)


def split_across_ranks(samples: list[TrainSample], world_size: int) -> list[list[int]]:
    """Sample indices per rank, balanced by token count (longest first onto the least-loaded rank). Deterministic:
    ties break by index, and each rank's indices come back in ascending order."""
    load = [0] * world_size
    ranks: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(samples)), key=lambda i: (-len(samples[i].token_ids), i)):
        r = min(range(world_size), key=lambda r: (load[r], len(ranks[r]), r))
        ranks[r].append(i)
        load[r] += len(samples[i].token_ids)
    return [sorted(r) for r in ranks]


def pack(samples: list[TrainSample], micro_batch_tokens: int) -> list[list[int]]:
    """Group sample indices so that each micro-batch's padded size (rows × longest row) stays within the budget.
    Longest first, so rows of similar length share a batch; a sample longer than the budget goes alone."""
    batches: list[list[int]] = []
    width = 0
    for i in sorted(range(len(samples)), key=lambda i: (-len(samples[i].token_ids), i)):
        n = len(samples[i].token_ids)
        if batches and (len(batches[-1]) + 1) * width <= micro_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
            width = n
    return batches


def collate(samples: list[TrainSample], indices: list[int], pad_token_id: int = 0) -> MicroBatch:
    """Right-pad the chosen samples into one micro-batch. No indices: one all-masked row (an empty micro-batch
    that still runs the model forward and backward, so the collectives inside line up across ranks)."""
    rows = [samples[i] for i in indices]
    for i, s in zip(indices, rows):
        if not (len(s.token_ids) == len(s.loss_mask) == len(s.old_logprobs)) or not s.token_ids:
            raise ValueError(f"train sample {i}: token_ids, loss_mask and old_logprobs must have the same, non-zero "
                             f"length; got {len(s.token_ids)}, {len(s.loss_mask)}, {len(s.old_logprobs)}")
    width = max((len(s.token_ids) for s in rows), default=1)
    shape = (max(len(rows), 1), width)
    batch = MicroBatch(
        input_ids=torch.full(shape, pad_token_id, dtype=torch.long),
        attention_mask=torch.zeros(shape, dtype=torch.long),
        loss_mask=torch.zeros(shape),
        old_logprobs=torch.zeros(shape),
        advantages=torch.zeros(shape),
        token_rewards=torch.zeros(shape),
        indices=list(indices),
    )
    if not rows:
        batch.attention_mask[0, 0] = 1  # one real (masked-out) token: the model needs something to attend to
    for row, s in enumerate(rows):
        n = len(s.token_ids)
        mask = torch.tensor(s.loss_mask, dtype=torch.float32)
        batch.input_ids[row, :n] = torch.tensor(s.token_ids)
        batch.attention_mask[row, :n] = 1
        batch.loss_mask[row, :n] = mask
        batch.old_logprobs[row, :n] = torch.tensor(s.old_logprobs, dtype=torch.float32) * mask
        batch.advantages[row, :n] = s.advantage * mask
        policy_positions = mask.nonzero()
        if len(policy_positions):
            batch.token_rewards[row, int(policy_positions[-1])] = s.reward
    return batch


def micro_batches(samples: list[TrainSample], micro_batch_tokens: int, count: int,
                  pad_token_id: int = 0) -> list[MicroBatch]:
    """This rank's micro-batches, padded with empty ones up to `count` (the maximum over ranks)."""
    groups = pack(samples, micro_batch_tokens)
    if len(groups) > count:
        raise ValueError(f"{len(groups)} micro-batches on this rank but count={count}")
    return [collate(samples, g, pad_token_id) for g in groups] + \
        [collate(samples, [], pad_token_id) for _ in range(count - len(groups))]
