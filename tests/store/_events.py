"""Event builders for the store tests (wire dicts, as a receiver hands them over)."""

from __future__ import annotations

from typing import Any

from aiocelev import ClusterState


def ev(
    type_: str, uuid: str | None = None, ts: float = 1.0, host: str = "w1@h", **fields: Any
) -> dict[str, Any]:
    d: dict[str, Any] = {"type": type_, "hostname": host, "timestamp": ts, "local_received": ts}
    if uuid is not None:
        d["uuid"] = uuid
    d.update(fields)
    return d


def lifecycle(
    uuid: str, outcome: str, t0: float, name: str = "proj.add", host: str = "w1@h", **fields: Any
) -> list[dict[str, Any]]:
    """received, started and one outcome event for task *uuid*."""
    events = [
        ev("task-received", uuid, t0, host, name=name, args=fields.pop("args", "(1, 2)"),
           kwargs=fields.pop("kwargs", "{}"), retries=0, root_id=uuid, parent_id=fields.pop("parent_id", None)),
        ev("task-started", uuid, t0 + 0.1, host),
    ]  # fmt: skip
    if outcome == "SUCCESS":
        events.append(
            ev(
                "task-succeeded",
                uuid,
                t0 + 0.2,
                host,
                result=fields.pop("result", "3"),
                runtime=0.1,
            )
        )
    elif outcome == "FAILURE":
        events.append(ev("task-failed", uuid, t0 + 0.2, host, exception=fields.pop("exception", "ValueError('bad')"),
                         traceback="Traceback (most recent call last):\nValueError: bad"))  # fmt: skip
    elif outcome == "RETRY":
        events.append(ev("task-retried", uuid, t0 + 0.2, host, exception="RuntimeError('again')"))
    elif outcome == "REVOKED":
        events.append(ev("task-revoked", uuid, t0 + 0.2, host, terminated=True))
    elif outcome == "PROGRESS":
        events.append(ev("task-progress", uuid, t0 + 0.2, host, percent=50))
    return events


def expected(events: list[dict[str, Any]]) -> ClusterState:
    state = ClusterState(max_tasks=1_000_000)
    for e in events:
        state.apply(e)
    return state


def comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A task dict without the fields the store and the state fill differently."""
    return {k: v for k, v in d.items() if k not in ("broker", "children")}
