"""``open_store(url)``: the store backend for a URL."""

from __future__ import annotations

from .._exceptions import UnknownSchemeError
from .._url import mask_url, scheme_of
from ._base import EventStore

__all__ = ["open_store"]


def open_store(url: str, *, event_log: bool = False) -> EventStore:
    """The store for *url* (not opened yet: ``async with open_store(url) as store``).

    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: SQLite
      (standard library, nothing to install);
    * ``postgresql://user:password@host:port/database`` (or ``postgres://``):
      PostgreSQL, with the ``postgres`` extra (asyncpg).

    :param event_log: also keep every event in the ``events`` table.
    :raises UnknownSchemeError: another scheme.
    :raises ConfigurationError: a bad option in the URL.
    :raises MissingDependencyError: asyncpg is not installed for a PostgreSQL URL.
    """
    scheme = scheme_of(url)
    if scheme == "sqlite":
        from ._sqlite import SQLiteStore

        return SQLiteStore(url, event_log=event_log)
    if scheme in ("postgresql", "postgres"):
        from ._postgres import PostgresStore

        return PostgresStore(url, event_log=event_log)
    raise UnknownSchemeError(
        f"no store for {mask_url(url)!r}: use sqlite:///path.db or postgresql://host/database"
    )
