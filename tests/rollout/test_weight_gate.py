"""WeightGate: weight loads and generations take turns on one engine (rollout/engine.py)."""

import asyncio

import pytest

from orchestra_rl.rollout.engine import WeightGate

pytestmark = pytest.mark.asyncio


async def test_a_load_waits_for_running_generations_and_holds_new_ones_back():
    gate, events = WeightGate(), []

    async def generation(name: str, seconds: float) -> int:
        async with gate.generating() as version:
            events.append(f"{name} starts at v{version}")
            await asyncio.sleep(seconds)
            events.append(f"{name} ends")
        return version

    async def load() -> str:
        events.append(f"load with {gate.running} running")
        return "loaded"

    running = asyncio.create_task(generation("a", 0.05))
    await asyncio.sleep(0)
    loading = asyncio.create_task(gate.load(load))
    await asyncio.sleep(0)
    queued = asyncio.create_task(generation("b", 0))
    assert await loading == "loaded" and await running == 0 and await queued == 1
    assert events == ["a starts at v0", "a ends", "load with 0 running", "b starts at v1", "b ends"]


async def test_versions_are_set_or_counted_and_a_failed_load_reopens_the_gate():
    gate = WeightGate(version=5)

    async def ok() -> None:
        return None

    async def broken() -> None:
        raise OSError("weights file vanished")

    await gate.load(ok)
    assert gate.version == 6
    await gate.load(ok, version=9)
    assert gate.version == 9
    with pytest.raises(OSError):
        await gate.load(broken)
    assert gate.version == 9  # the old weights stay, and so does their label

    async def generation() -> int:
        async with gate.generating() as version:
            return version

    assert await asyncio.wait_for(generation(), timeout=1) == 9 and gate.running == 0


async def test_concurrent_loads_run_one_after_the_other():
    gate, active, peak = WeightGate(), [0], [0]

    async def load() -> None:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.01)
        active[0] -= 1

    await asyncio.gather(*(gate.load(load) for _ in range(3)))
    assert peak[0] == 1 and gate.version == 3
