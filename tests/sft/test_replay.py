"""Replay of the base's drills in SFT: the pretraining samples, read where the policy reads, teaching no routing."""

from transformers import AutoTokenizer

from orchestra_rl.models.pretrain import DrillMaker, ReadingDrillMaker, context_ids, encode_drill
from orchestra_rl.models.tiny import chat_context
from orchestra_rl.sft.replay import replay_samples


def test_replayed_drills_follow_the_system_turn_with_the_loss_where_pretraining_put_it(make_config,
                                                                                       tiny_model_path):
    cfg = make_config("model.pretrain_reading_share=0.5")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    samples = replay_samples(cfg, tokenizer, 40)
    prefix = context_ids(tokenizer, chat_context(cfg))
    # The base's own streams: the copy and reading drills pretraining drew first, mixed at its reading share.
    copier, reader = DrillMaker(list(cfg.model.word_tokens), cfg.model.seed), ReadingDrillMaker(cfg.model.seed)
    reading = 0
    for ids, mask in samples:
        assert ids[:len(prefix)] == prefix and not any(mask[:len(prefix)])  # the system turn is context only
        drill_ids, drill_mask = ids[len(prefix):], mask[len(prefix):]
        is_reading = tokenizer.decode(drill_ids).count("<tool_response>") > 0
        drill = reader.drill() if is_reading else copier.drill()
        assert (drill_ids, drill_mask) == encode_drill(tokenizer, drill)[:2]
        loss_text = tokenizer.decode([t for t, m in zip(drill_ids, drill_mask) if m])
        # A reading drill's tool name is never trained on (its tool follows a plan: that would teach routing).
        assert (f'"name": "{drill.tool}"' in loss_text) == drill.random_tool
        reading += is_reading
    assert 10 <= reading <= 30  # about half, as model.pretrain_reading_share says

    assert len({tuple(ids) for ids, _ in replay_samples(make_config("model.pretrain_reading_share=0"),
                                                          tokenizer, 20)
                if "<tool_response>" not in tokenizer.decode(ids)}) == 20  # copy drills only, all distinct


def test_only_the_tiny_base_has_drills_to_replay(make_config, tiny_model_path):
    # The default replays drills; a model without the tiny base's tool words (model=qwen3_8b) was not pretrained on
    # any, so the same default replays none there instead of failing.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert len(replay_samples(make_config(), tokenizer, 4)) == 4
    assert replay_samples(make_config(), tokenizer, 0) == []
    assert replay_samples(make_config("model.word_tokens=[]", "model.pretrain_steps=0"), tokenizer, 4) == []
    assert make_config("model=qwen3_8b", "model.pretrain_steps=0").sft.replay_drills > 0  # validates for a real model
