"""Replay of the tiny base model's drills during SFT, so fine-tuning keeps what pretraining taught.

SFT on a few hundred demonstrations for several epochs overwrites the base's reading: after the default SFT the
policy answered most held-out lookup drills "unknown" (what a demonstration answers when its tool responses lack
the fact) where the base read the passage (docs/benchmarks.md). RL cannot route lookups to search with a policy
that no longer reads what search returns. Mixing the pretraining data back in is the usual cure for such
forgetting (InstructGPT's pretraining mix in PPO): these samples are drills from the base's own streams (copy
drills, and reading drills at model.pretrain_reading_share), each after the policy's system turn, with the loss
where pretraining put it. They teach no routing: a copy drill's tool is drawn uniformly, and a reading drill's
loss never falls on its tool name.
"""

from __future__ import annotations

import random
from typing import Any

from orchestra_rl.config import Config
from orchestra_rl.models.pretrain import (DrillMaker, ReadingDrillMaker, context_ids, copy_accuracy, encode_drill,
                                          held_out_drills, reads)
from orchestra_rl.models.tiny import chat_context


def replay_samples(cfg: Config, tokenizer: Any, n: int) -> list[tuple[list[int], list[int]]]:
    """n (token ids, loss mask) samples of the base's drills, read after the configured system turn; none for a
    model without the tiny base's tool words (model.word_tokens): such a model was not pretrained on drills."""
    if n <= 0 or not cfg.model.word_tokens:
        return []
    tools = list(cfg.model.word_tokens)
    share = cfg.model.pretrain_reading_share if reads(tools, cfg.model.pretrain_reading_share) else 0.0
    seed = cfg.model.seed
    copier, reader = DrillMaker(tools, seed), ReadingDrillMaker(seed) if share > 0 else None
    mixer, prefix = random.Random(f"sft-replay/{seed}"), context_ids(tokenizer, chat_context(cfg))
    samples = []
    for _ in range(n):
        drill = reader.drill() if reader is not None and mixer.random() < share else copier.drill()
        ids, loss_mask, _ = encode_drill(tokenizer, drill)
        samples.append((prefix + ids, [0] * len(prefix) + loss_mask))
    return samples


def drill_accuracy(cfg: Config, model_path: str, n: int) -> dict[str, float]:
    """The share of held-out copy and reading drills (the n that copy pretraining judged the base on) that the
    model at `model_path` writes exactly after the system turn: what SFT kept of the base's skills."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tools = list(cfg.model.word_tokens)
    reading = reads(tools, cfg.model.pretrain_reading_share)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    context = chat_context(cfg)
    return {f"{kind}_accuracy": copy_accuracy(model, tokenizer, drills, context)
            for kind, drills in held_out_drills(tools, cfg.model.seed, n, reading).items()}
