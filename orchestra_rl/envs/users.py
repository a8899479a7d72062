"""Users that are not models: the deterministic stand-in for a user simulator, shared by the worlds with a user."""

from __future__ import annotations

STOP, TRANSFER = "###STOP###", "###TRANSFER###"  # end-of-conversation tokens (τ²-Bench's: tau2.user.base)


class ScriptedUser:
    """A deterministic stand-in for an LLM user simulator, for machines without one: it opens with `opening` (the
    reason for calling and what the user knows), answers the agent's messages with `script` in order (the task's
    instructions), then ends the conversation (###STOP###), or at once (###TRANSFER###) once the agent has
    transferred it to a human. It reads nothing the agent says: a policy cannot talk it into anything, and its
    replies are the same for every rollout."""

    def __init__(self, opening: str, script: list[str]):
        self.opening, self.script = opening, [s for s in script if s]

    def next_reply(self, transferred: bool) -> tuple[str, bool]:
        """The user's next words; whether they end the conversation."""
        if transferred:
            return TRANSFER, True
        if self.script:
            return self.script.pop(0), False
        return f"Thank you, that is all. {STOP}", True
