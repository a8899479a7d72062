"""Bounded retries of a remote call, for the tools that make one (llm, web search).

Remote calls fail in ordinary ways (rate limits, overloaded servers, dropped connections). Each attempt is bounded
in wall time; a failure the tool calls transient, or an attempt that timed out, is retried after an exponential
backoff with jitter, at most `max_retries` times; any other failure is final at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def describe(exc: Exception, max_chars: int = 300) -> str:
    """One line for the policy and the log; cut short, as a proxy's error page can be a whole HTML document."""
    if isinstance(exc, TimeoutError):
        return "TimeoutError: no response in time"
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


class CallFailed(Exception):
    """The last attempt of a call failed, or a failure was not worth retrying."""

    def __init__(self, cause: Exception, attempts: int):
        super().__init__(f"failed after {attempts} attempt(s): {describe(cause)}")
        self.cause, self.attempts = cause, attempts


@dataclass(frozen=True)
class Retry:
    max_retries: int
    timeout_s: float  # of each attempt
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0

    @property
    def deadline_s(self) -> float:
        """Worst-case wall time of one call: every attempt times out and every wait before a retry is the longest
        allowed (backoff_max_s: a server's Retry-After may ask for that much). The executor's deadline for the
        tool must leave room for it."""
        return (self.max_retries + 1) * self.timeout_s + self.max_retries * self.backoff_max_s

    def backoff_delay_max(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2**attempt)

    def backoff_delay(self, attempt: int) -> float:
        # Jitter in [max/2, max]: spreads out retries of calls that failed together, keeps a lower bound.
        return self.backoff_delay_max(attempt) * random.uniform(0.5, 1.0)

    async def call(self, attempt: Callable[[], Awaitable[T]], errors: tuple[type[Exception], ...],
                   transient: Callable[[Exception], bool], what: str,
                   retry_after: Callable[[Exception], float | None] = lambda exc: None) -> T:
        """The result of the first attempt that succeeds. A failure of one of `errors` is retried when `transient`
        says so; the final one raises CallFailed. Other exceptions are bugs, not failures: they propagate.
        `retry_after(exc)`: the wait the server asked for (a 429's Retry-After), honoured up to backoff_max_s so
        that `deadline_s` still bounds the call."""
        attempts, n = self.max_retries + 1, 0
        while True:
            n += 1
            try:
                # The client's own timeout may apply per network phase; this bounds the whole attempt in wall time.
                async with asyncio.timeout(self.timeout_s):
                    return await attempt()
            except (TimeoutError, *errors) as exc:
                retry = n < attempts and (isinstance(exc, TimeoutError) or transient(exc))
                log.warning("%s: attempt %d/%d failed: %s%s", what, n, attempts, describe(exc),
                            "; retrying" if retry else "")
                if not retry:
                    raise CallFailed(exc, n) from exc
                asked = retry_after(exc)
                delay = self.backoff_delay(n - 1)
                await asyncio.sleep(max(delay, min(asked, self.backoff_max_s)) if asked is not None else delay)
