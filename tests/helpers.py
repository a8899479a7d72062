"""Small helpers shared by test modules."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def policy_segments(trajectory) -> list[list[int]]:
    """The runs of tokens the policy sampled (loss_mask 1), one per turn."""
    segments, previous = [], 0
    for token, m in zip(trajectory.token_ids, trajectory.loss_mask):
        if m and not previous:
            segments.append([])
        if m:
            segments[-1].append(token)
        previous = m
    return segments
