"""The dashboard command's collector pacing: survivors frozen, cycles still collected."""

from __future__ import annotations

import gc
import weakref

import anyio
import pytest

from aiocelev.dashboard._gc import pace_gc

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


async def test_survivors_are_frozen_young_cycles_collected_and_all_released_at_the_end() -> None:
    gc.unfreeze()
    kept = [Node() for _ in range(100)]  # alive: end up frozen
    garbage = Node()
    dead = weakref.ref(garbage)
    del garbage
    async with anyio.create_task_group() as tg:
        tg.start_soon(pace_gc, 0.05, 1000)
        with anyio.fail_after(10):
            while gc.get_freeze_count() == 0:
                await anyio.sleep(0.01)
        assert dead() is None  # collected before the freeze, not leaked into it
        tg.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0  # nothing left frozen once it stops
    assert len(kept) == 100


async def test_every_few_rounds_everything_is_released_and_collected() -> None:
    gc.unfreeze()
    frozen_counts: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(pace_gc, 0.02, 2)
        with anyio.fail_after(10):
            while len(frozen_counts) < 40:
                frozen_counts.append(gc.get_freeze_count())
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    # Frozen after odd rounds, released (0) after even ones: both states were seen after a freeze.
    first = next(i for i, n in enumerate(frozen_counts) if n > 0)
    assert 0 in frozen_counts[first:]
    gc.unfreeze()
