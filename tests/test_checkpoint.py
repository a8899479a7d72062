"""Trainer state: what a resumed run reads back, and which checkpoint counts as the latest."""

from orchestra_rl.checkpoint import checkpoint_dir, latest_checkpoint, load_trainer_state, save_trainer_state


def test_latest_checkpoint_is_the_newest_with_trainer_state(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None
    for step in (10, 20):
        ckpt = checkpoint_dir(str(tmp_path), step)
        ckpt.mkdir(parents=True)
        save_trainer_state(ckpt, step, data_position=8 * step, wandb_id="run-a")
    checkpoint_dir(str(tmp_path), 30).mkdir()  # interrupted before trainer_state.json: not complete

    latest = latest_checkpoint(str(tmp_path))

    assert latest == tmp_path / "checkpoints" / "step_000020"
    assert load_trainer_state(latest) == {"step": 20, "data_position": 160, "wandb_id": "run-a"}
    assert not list(latest.glob("*.tmp"))
