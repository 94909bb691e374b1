"""Task history that outlives memory and restarts: an event store on a database.

::

    from aiocelev.store import open_store

    async with open_store("sqlite:///history.db") as store:
        await store.write(events)                     # one transaction, idempotent
        page = await store.query({"state": "FAILURE", "name": "proj.add"}, limit=20)
        more = await store.query({"state": "FAILURE"}, cursor=page.cursor)

* :func:`open_store` gives the backend for a URL: ``sqlite:///path.db`` (standard
  library, WAL mode) or ``postgresql://...`` (the ``postgres`` extra, asyncpg).
* :class:`EventStore` is the interface every backend implements: ``write``,
  ``query`` / ``count`` (the dashboard's filter language, cursor pages), ``get``,
  ``workers``, ``unfinished``, ``restore`` (into a :class:`~aiocelev.ClusterState`),
  ``prune`` (retention) and ``events`` (the optional raw log).
* :class:`StoreWriter` batches writes behind a bounded buffer, with backpressure,
  preparing the next batch (:meth:`EventStore.prepare`, a :class:`Prepared`) while
  the previous one is written.
* :class:`Ingest` runs a receiver into a writer and acknowledges broker messages
  only after their events are committed (at least once, on RabbitMQ).

See ``docs/store.md``.
"""

from __future__ import annotations

from .._exceptions import StoreConnectionError, StoreError
from ._base import EventStore, StoreStatistics, TaskPage
from ._filter import QueryError, TaskFilter, Term, parse_search, parse_time
from ._ingest import Ingest, IngestStatistics
from ._open import open_store
from ._rows import Prepared
from ._writer import StoreWriter, WriterStatistics

__all__ = [
    "EventStore",
    "Ingest",
    "IngestStatistics",
    "Prepared",
    "QueryError",
    "StoreConnectionError",
    "StoreError",
    "StoreStatistics",
    "StoreWriter",
    "TaskFilter",
    "TaskPage",
    "Term",
    "WriterStatistics",
    "open_store",
    "parse_search",
    "parse_time",
]
