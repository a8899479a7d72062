"""Retry: which failures are retried, how often, how long each attempt and backoff may take."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestra_rl.tools.retry import CallFailed, Retry, describe


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def failing(*failures: Exception):
    """An attempt function that raises `failures` in turn, then returns "ok"; counts its calls."""
    calls = []

    async def attempt() -> str:
        calls.append(time.perf_counter())
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "ok"

    return attempt, calls


async def call(retry: Retry, attempt) -> str:
    return await retry.call(attempt, errors=(Transient, Permanent), transient=lambda e: isinstance(e, Transient),
                            what="test")


async def test_transient_failures_are_retried_after_a_backoff():
    attempt, calls = failing(Transient("503"), Transient("429"))
    retry = Retry(max_retries=2, timeout_s=1.0, backoff_s=0.05)

    assert await call(retry, attempt) == "ok"

    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.5 * retry.backoff_delay_max(0)
    assert calls[2] - calls[1] >= 0.5 * retry.backoff_delay_max(1)


async def test_the_last_failure_or_a_permanent_one_raises_call_failed():
    attempt, calls = failing(*[Transient("503")] * 5)
    with pytest.raises(CallFailed, match=r"^failed after 3 attempt\(s\): Transient: 503$") as err:
        await call(Retry(max_retries=2, timeout_s=1.0, backoff_s=0.01), attempt)
    assert err.value.attempts == 3 and isinstance(err.value.cause, Transient) and len(calls) == 3

    attempt, calls = failing(Permanent("bad key"))
    with pytest.raises(CallFailed, match=r"after 1 attempt\(s\): Permanent: bad key"):
        await call(Retry(max_retries=2, timeout_s=1.0, backoff_s=0.01), attempt)
    assert len(calls) == 1


async def test_an_exception_outside_errors_propagates_unretried():
    attempt, calls = failing(KeyError("bug"))
    with pytest.raises(KeyError):
        await call(Retry(max_retries=2, timeout_s=1.0), attempt)
    assert len(calls) == 1


async def test_each_attempt_is_bounded_and_a_timeout_is_retried():
    calls = []

    async def hang() -> str:
        calls.append(1)
        await asyncio.sleep(10)
        return "too late"

    start = time.perf_counter()
    with pytest.raises(CallFailed, match=r"after 2 attempt\(s\): TimeoutError: no response in time"):
        await call(Retry(max_retries=1, timeout_s=0.2, backoff_s=0.01), hang)
    assert len(calls) == 2 and 0.4 <= time.perf_counter() - start < 2.0


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    retry = Retry(max_retries=2, timeout_s=10.0, backoff_s=0.5, backoff_max_s=1.5)
    assert [retry.backoff_delay_max(a) for a in range(4)] == [0.5, 1.0, 1.5, 1.5]
    for attempt in range(4):
        delays = [retry.backoff_delay(attempt) for _ in range(200)]
        assert 0.5 * retry.backoff_delay_max(attempt) <= min(delays) <= max(delays) <= retry.backoff_delay_max(attempt)
    assert retry.deadline_s == 3 * 10.0 + 2 * 1.5  # three timed-out attempts, two of the longest waits


def test_describe_is_one_short_line():
    assert describe(ValueError("a\n  b")) == "ValueError: a b"
    assert len(describe(ValueError("x" * 1000))) == 300
