"""Store fixtures: every conformance test runs on SQLite and on the real PostgreSQL.

PostgreSQL is found at ``AIOCELEV_TEST_POSTGRES_URL`` (default: the local server,
trust auth, database ``test``); each test gets a schema of its own, dropped
afterwards, so concurrent runs never collide.  Unreachable, the PostgreSQL cases
are skipped locally and fail with ``CI=true``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aiocelev.store import EventStore, open_store

from ..conftest import IN_CI

POSTGRES_URL = __import__("os").environ.get(
    "AIOCELEV_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_reachable() -> bool:
    parts = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5432), 2):
            return True
    except OSError:
        return False


def require_postgres() -> None:
    """Skip (locally) or fail (with CI=true) when PostgreSQL is unreachable."""
    if postgres_reachable():
        return
    reason = f"PostgreSQL not reachable at {urlsplit(POSTGRES_URL).netloc}"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing database is a failure, not a skip)")
    pytest.skip(reason)


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL store URL with a schema of its own (dropped afterwards)."""
    require_postgres()
    schema = f"aiocelev_test_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    import anyio

    anyio.run(drop_schema, schema)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL, one per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[EventStore]:
    """An open store, one per backend."""
    async with open_store(store_url) as s:
        yield s
