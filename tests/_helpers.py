"""Fixtures and helpers shared by the tests that run on ``memory://``.

A module gets the fixtures ``url``, ``broker`` and ``hub`` by importing
``url_fixture``, ``broker_fixture`` and ``hub_fixture``; each test gets its own
memory hub, named after the test.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import anyio
import pytest

from aiocelev.brokers.memory import MemoryBroker, MemoryHub, memory_hub

__all__ = ["broker_fixture", "hub_fixture", "memory_url", "url_fixture", "wait_until"]


def memory_url(request: pytest.FixtureRequest) -> str:
    """A ``memory://`` URL of the test's own hub (named after the test)."""
    return "memory://" + re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)


@pytest.fixture(name="url")
def url_fixture(request: pytest.FixtureRequest) -> str:
    """The test's own ``memory://`` URL."""
    return memory_url(request)


@pytest.fixture(name="broker")
async def broker_fixture(url: str) -> AsyncIterator[MemoryBroker]:
    """A connected :class:`MemoryBroker` on the ``url`` fixture."""
    b = MemoryBroker(url)
    await b.connect()
    yield b
    await b.aclose()


@pytest.fixture(name="hub")
def hub_fixture(url: str, broker: MemoryBroker) -> MemoryHub:
    """The hub behind the ``broker`` fixture."""
    return memory_hub(url)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll *predicate* until it is true; fail the test after *timeout* seconds.

    :raises AssertionError: *predicate* stayed false (the message names *what*).
    """
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout}s: {what or predicate}") from None


def read_output(file: IO[Any]) -> str:
    """Everything a child process wrote so far to *file* (its stdout or stderr).

    Read with ``pread``: the child shares the file's offset, so seeking the file
    and reading it would move the child's write position, and a line written
    meanwhile would overwrite the start of the output.
    """
    fd = file.fileno()
    chunks: list[bytes] = []
    pos = 0
    while chunk := os.pread(fd, 1 << 16, pos):
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
