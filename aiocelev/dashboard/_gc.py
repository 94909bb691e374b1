"""Garbage-collector pacing for a process that holds a large, churning state.

A dashboard holds up to ``max_tasks`` task records; at tens of thousands of
events per second it creates and evicts them continuously, so CPython's
full (generation 2) collection runs every second or two and walks every
record each time: measured at 20k events/s over 100,000 tasks, 9 full
collections of up to 0.34 s each, a third of all GC time and the largest
latency spikes.  Task records hold no reference cycles (parents and children
are linked by id), so reference counting frees them; the cycle collector only
needs to look at young objects.

:func:`pace_gc` moves the objects that survived the young collections into
CPython's permanent generation (``gc.freeze``) every *interval* seconds, so full
collections only walk what is newer.  Cyclic garbage caught in a freeze would
never be collected, so every *full_every* freezes the permanent generation is
released and collected once (one full pause, about every ten minutes).

It changes the collector of the whole process: the ``aiocelev dashboard``
command runs it; an application that mounts the dashboard decides for itself.
"""

from __future__ import annotations

import gc

import anyio

__all__ = ["pace_gc"]


async def pace_gc(interval: float = 10.0, full_every: int = 60) -> None:
    """Freeze survivors every *interval* s; unfreeze and collect everything every *full_every* rounds.

    Runs until cancelled; leaves the collector as it found it (nothing frozen).
    """
    rounds = 0
    try:
        while True:
            await anyio.sleep(interval)
            rounds += 1
            if rounds % full_every == 0:
                gc.unfreeze()
                gc.collect()
            else:
                gc.collect(1)  # young cyclic garbage goes first, never into the freeze
                gc.freeze()
    finally:
        gc.unfreeze()
