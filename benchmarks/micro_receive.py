"""In-process micro-benchmark of the receive path above the broker adapter.

``python -m benchmarks.micro_receive [--n N]``: the receive-case stream
(task-received / started / succeeded from four workers), pre-encoded as
``IncomingMessage`` objects, is fed to :class:`aiocelev.EventReceiver` by a
subscription that yields them from a list (no broker, no I/O), and consumed
with ``async for`` (optionally applying to ``ClusterState``) or, where the
receiver has it, ``receiver.batches()`` (``dicts=True`` when applying to the state).  Events per second of CPU, best of
three: what the receiver and the state cost per event, without the transport.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from aiocelev import EventReceiver
from aiocelev._codec import dumps
from aiocelev._message import IncomingMessage
from aiocelev._state import ClusterState

from ._common import lifecycle_events


class _ListSubscription:
    def __init__(self, messages: list[IncomingMessage]) -> None:
        self._it = iter(messages)

    def __aiter__(self) -> AsyncIterator[IncomingMessage]:
        return self

    async def __anext__(self) -> IncomingMessage:
        for message in self._it:
            return message
        raise StopAsyncIteration

    async def aclose(self) -> None:
        pass


class _ListBroker:
    url = "memory://micro"

    def __init__(self, messages: list[IncomingMessage]) -> None:
        self._messages = messages

    async def connect(self) -> None:
        pass

    async def publish(self, messages: Any) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    async def subscribe(self, keys: Any) -> _ListSubscription:
        return _ListSubscription(self._messages)

    def control(self) -> Any:  # pragma: no cover - unused
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def messages(n: int, batched: bool) -> list[IncomingMessage]:
    """The receive cases' stream as incoming messages."""
    events = list(lifecycle_events(n))
    if batched:
        return [
            IncomingMessage("task.multi", dumps(events[i : i + 24]).encode())
            for i in range(0, n, 24)
        ]
    return [IncomingMessage(e["type"].replace("-", "."), dumps(e).encode()) for e in events]


async def _run(msgs: list[IncomingMessage], mode: str) -> int:
    count = 0
    state = ClusterState(max_tasks=10_000) if mode.endswith("state") else None
    async with EventReceiver(_ListBroker(msgs), buffer_size=10_000) as receiver:  # type: ignore[arg-type]
        if mode.startswith("batches"):
            async for batch in receiver.batches(dicts=state is not None):
                if state is not None:
                    state.apply_many(batch)
                count += len(batch)
        else:
            apply = state.apply if state is not None else None
            async for event in receiver:
                if apply is not None:
                    apply(event)
                count += 1
    return count


def main() -> None:
    """Print events per CPU-second for each stream and consuming mode."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=120_000)
    parser.add_argument("--modes", default="iter,batches,iter+state,batches+state")
    args = parser.parse_args()
    for batched in (True, False):
        msgs_ = messages(args.n, batched)
        for mode in args.modes.split(","):
            if mode.startswith("batches") and not hasattr(EventReceiver, "batches"):
                continue
            best = 0.0
            for _ in range(3):
                fresh = [IncomingMessage(m.routing_key, m.body) for m in msgs_]
                t0 = time.process_time()
                count = anyio.run(_run, fresh, mode)
                rate = count / (time.process_time() - t0)
                best = max(best, rate)
            kind = "batched" if batched else "single"
            print(f"{kind:8} {mode:14} {best:12,.0f} events/CPU-s", flush=True)


if __name__ == "__main__":
    main()
