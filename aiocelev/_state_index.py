"""The secondary indexes of :class:`~aiocelev.ClusterState`.

A :class:`TaskIndex` groups the kept tasks by one attribute (state, name or
worker): ``key -> {uuid: task}``, each group in the order its tasks joined it,
so "newest first" is a reversed walk and nothing is ever sorted.  The index is
the only code that adds to, moves between or removes from the groups; an
empty group is dropped at once, so the keys are exactly the values in use.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Generic, TypeVar

__all__ = ["TaskIndex", "newest"]

_T = TypeVar("_T")


def newest(group: dict[str, _T] | None, limit: int | None) -> list[_T]:
    """The values of an insertion-ordered dict, the most recently added first."""
    if not group:
        return []
    return list(islice(reversed(group.values()), limit))


class TaskIndex(Generic[_T]):
    """Records grouped by a key; a record is in at most one group.

    ``None`` as a key means "not indexed": :meth:`move` from or to ``None``
    only adds or only removes.
    """

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, _T]] = {}

    def add(self, key: str, uuid: str, record: _T) -> None:
        """Put *record* (id *uuid*) at the newest end of group *key*."""
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = {uuid: record}
        else:
            group[uuid] = record

    def remove(self, key: str | None, uuid: str) -> None:
        """Take *uuid* out of group *key* (nothing when *key* is ``None``)."""
        if key is None:
            return
        groups = self._groups
        group = groups[key]
        del group[uuid]
        if not group:
            del groups[key]

    def move(self, old: str | None, new: str | None, uuid: str, record: _T) -> None:
        """Move *record* from group *old* to the newest end of group *new*."""
        groups = self._groups
        if old is not None:
            group = groups[old]
            del group[uuid]
            if not group:
                del groups[old]
        if new is not None:
            target = groups.get(new)
            if target is None:
                groups[new] = {uuid: record}
            else:
                target[uuid] = record

    def newest(self, key: str, limit: int | None = None) -> list[_T]:
        """The records of group *key*, the most recent to join first."""
        return newest(self._groups.get(key), limit)

    def counts(self) -> dict[str, int]:
        """The size of every group."""
        return {key: len(group) for key, group in self._groups.items()}

    def keys(self) -> list[str]:
        """The keys in use, sorted."""
        return sorted(self._groups)

    def clear(self) -> None:
        """Empty every group."""
        self._groups.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._groups

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return f"<TaskIndex {self.counts()}>"
