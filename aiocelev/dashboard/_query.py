"""Task queries over ``ClusterState``, and Flower's API contract as data.

Flower's read API is a contract existing scripts depend on: its query
parameters, its sort keys, the date format of ``received_start`` /
``received_end`` and the fields of a task.  They are kept here, in one place,
rather than spread through the handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from aiocelev import ClusterState, TaskState

# The filter language is shared with the task-history store and ``aiocelev tasks``:
# its pure parser lives in ``aiocelev.store._filter`` (re-exported here).
from ..store._filter import (
    FIELD_TERMS as FIELD_TERMS,
    FLOWER_DATE_FORMAT as FLOWER_DATE_FORMAT,
    SEARCH_FIELDS as SEARCH_FIELDS,
    QueryError as QueryError,
    TaskFilter as TaskFilter,
    Term as Term,
    parse_search as parse_search,
    parse_time as parse_time,
)

__all__ = [
    "FLOWER_SORT_KEYS",
    "FLOWER_TASK_FIELDS",
    "FLOWER_TASKS_PARAMS",
    "QueryError",
    "TaskQuery",
    "flower_task",
]

#: ``GET /api/tasks`` query parameters (Flower 2.2, ``flower/api/tasks.py``).
FLOWER_TASKS_PARAMS = (
    "limit",
    "offset",
    "sort_by",
    "workername",
    "taskname",
    "state",
    "received_start",
    "received_end",
    "search",
)
#: ``sort_by`` keys Flower accepts (``-key`` sorts descending).
FLOWER_SORT_KEYS = frozenset({"name", "state", "received", "started"})
#: More keys the dashboard's own pages sort by.
PAGE_SORT_KEYS = FLOWER_SORT_KEYS | {"runtime", "worker", "timestamp", "succeeded", "failed"}
#: The fields of a task in Flower's answers (``celery.events.state.Task._fields``).
FLOWER_TASK_FIELDS = (
    "uuid",
    "name",
    "state",
    "received",
    "sent",
    "started",
    "rejected",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "args",
    "kwargs",
    "eta",
    "expires",
    "retries",
    "worker",
    "result",
    "exception",
    "timestamp",
    "runtime",
    "traceback",
    "exchange",
    "routing_key",
    "clock",
    "client",
    "root",
    "root_id",
    "parent",
    "parent_id",
    "children",
)
#: Names meaning "no filter" (Flower's pages send ``All``).
_ANY = frozenset({"", "All", "all", "any"})


def flower_task(task: TaskState, broker: str | None) -> dict[str, Any]:
    """*task* as Flower's API shows it, plus ``broker`` (the masked URL it came from)."""
    d = task.to_dict()
    out = {name: d.get(name) for name in FLOWER_TASK_FIELDS}
    out["root"] = task.root_id
    out["parent"] = task.parent_id
    out["children"] = task.children
    out["broker"] = broker
    return out


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if type(value) is str else repr(value)


def _matches(task: TaskState, terms: list[Term]) -> bool:
    for term in terms:
        if term.field is None:
            hit = any(term.text in _text(getattr(task, f)).lower() for f in SEARCH_FIELDS)
        else:
            hit = term.text in _text(getattr(task, term.field)).lower()
        if hit == term.negate:
            return False
    return True


@dataclass
class TaskQuery(TaskFilter):
    """Filters (the store's :class:`TaskFilter`), sort and page of a task list."""

    sort_by: str | None = None
    offset: int = 0
    limit: int | None = None

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, str],
        *,
        sort_keys: frozenset[str] = FLOWER_SORT_KEYS,
        default_limit: int | None = None,
        max_limit: int | None = None,
    ) -> TaskQuery:
        """Read Flower's names (``taskname``, ``workername``...) or the page's (``name``, ``worker``).

        :raises QueryError: a bad number, date or sort key.
        """

        def integer(name: str, default: int | None) -> int | None:
            value = params.get(name)
            if value is None or value == "":
                return default
            try:
                return int(value)
            except ValueError:
                raise QueryError(f"invalid {name} {value!r}, expected an integer") from None

        sort_by = params.get("sort_by")
        if sort_by in _ANY:
            sort_by = None
        if sort_by is not None and sort_by.lstrip("-") not in sort_keys:
            raise QueryError(
                f"Invalid sort_by '{sort_by}', expected one of {', '.join(sorted(sort_keys))}"
            )
        limit = integer("limit", default_limit)
        if limit is not None and max_limit is not None:
            limit = max(1, min(limit, max_limit))
        conditions = TaskFilter.from_params(params)
        return cls(
            **{f.name: getattr(conditions, f.name) for f in fields(TaskFilter)},
            sort_by=sort_by,
            offset=max(integer("offset", 0) or 0, 0),
            limit=limit,
        )

    def _candidates(self, state: ClusterState) -> Iterable[TaskState]:
        # Start from the smallest maintained index the filters allow.
        sets: list[list[TaskState]] = []
        if self.state is not None:
            sets.append(state.tasks_by_state(self.state.upper()))
        if self.name is not None:
            sets.append(state.tasks_by_name(self.name))
        if self.worker is not None:
            sets.append(state.tasks_by_worker(self.worker))
        if sets:
            return min(sets, key=len)
        return state.tasks_by_time(limit=None)

    def run(
        self, state: ClusterState, broker_of: Callable[[TaskState], str | None] | None = None
    ) -> tuple[int, list[TaskState]]:
        """``(total matching, the requested page)``, newest first unless ``sort_by`` says otherwise."""
        preds: list[Callable[[TaskState], bool]] = []
        if self.state is not None:
            wanted = self.state.upper()
            preds.append(lambda t: t.state == wanted)
        if self.name is not None:
            preds.append(lambda t: t.name == self.name)
        if self.worker is not None:
            preds.append(lambda t: t.worker == self.worker)
        if self.broker is not None and broker_of is not None:
            preds.append(lambda t: broker_of(t) == self.broker)
        for attr, low, high in (
            ("received", self.received_start, self.received_end),
            ("started", self.started_start, self.started_end),
        ):
            if low is not None or high is not None:
                preds.append(_between(attr, low, high))
        if self.search:
            terms = self.search
            preds.append(lambda t: _matches(t, terms))
        tasks = [t for t in self._candidates(state) if all(p(t) for p in preds)]
        sort_by = self.sort_by
        if sort_by is None and (self.state or self.name or self.worker):
            sort_by = "-timestamp"  # indexes are in arrival order; show newest first
        if sort_by is not None:
            key = sort_by.lstrip("-")
            descending = sort_by.startswith("-")
            present = [t for t in tasks if getattr(t, key) is not None]
            missing = [t for t in tasks if getattr(t, key) is None]
            present.sort(key=lambda t: getattr(t, key), reverse=descending)
            tasks = present + missing
        total = len(tasks)
        end = None if self.limit is None else self.offset + self.limit
        return total, tasks[self.offset : end]


def _between(attr: str, low: float | None, high: float | None) -> Callable[[TaskState], bool]:
    def check(task: TaskState) -> bool:
        value = getattr(task, attr)
        if value is None:
            return False
        if low is not None and value < low:
            return False
        return not (high is not None and value > high)

    return check
