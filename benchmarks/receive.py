"""Receive throughput of a stream published faster than either receiver consumes.

The receiver subscribes first, then starts a separate publisher process that
sends ``n`` lifecycle events (task-received / started / succeeded, pre-encoded)
either batched 24 per ``task.multi`` message, as a Celery worker sends them
under load, or one per message.  The receiver does not read while the
publisher sends (see ``_receivers``, ``backlog``): the whole stream waits in
the broker, and the rate is events received / time from the moment the
receiver starts reading it to the last event, the receiver's own speed rather
than that of three processes sharing the machine's cores (``"backlog": false``
in the spec, or ``--live``, measures from the start of the publisher's burst
instead).  On RabbitMQ both receivers declare their queue
with the same 120 s message TTL (instead of the default 5 s) so that the
backlog of the slower receiver does not expire; Redis has no TTL (a subscriber
that falls more than 32 MiB behind is disconnected by the server, so ``n`` is
sized below that).

With ``state=True`` (the *monitor* case) every event is also applied to a
state: ``celery.events.state.State`` (``max_tasks_in_memory=10000``) for
Celery, ``aiocelev.ClusterState`` (``max_tasks=10000``) for aiocelev.  With
``batches=True`` aiocelev is consumed a list at a time
(``receiver.batches()``, each list handed to ``ClusterState.apply_many``;
with ``dicts=True`` too, ``receiver.batches(dicts=True)``: wire dicts, as
Celery's receiver hands its handlers):
what a monitor built on aiocelev does.
"""

from __future__ import annotations

from typing import Any

from ._common import RECEIVE_QUEUE_TTL
from ._receivers import run_aiocelev, run_celery


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in a fresh process)."""
    stream = {"mode": f"raw-{spec['stream']}", "n": spec["n"]}
    amqp = spec["broker"] == "amqp"
    with_state = spec.get("state", False)
    if spec["impl"] == "aiocelev":
        broker_options = {"message_ttl": RECEIVE_QUEUE_TTL} if amqp else {}
        batches = spec.get("batches", False)
        if with_state:
            from aiocelev._state import ClusterState

            state = ClusterState(max_tasks=10_000)
            handle: Any = state.apply_many if batches else state.apply
        elif batches:

            def handle(events: Any) -> None:
                pass

        else:

            def handle(event: Any) -> None:
                pass

        result = run_aiocelev(
            spec,
            stream,
            handle,
            broker_options=broker_options,
            batches=batches,
            dicts=spec.get("dicts", False),
            backlog=spec.get("backlog", True),
        )
        if with_state:
            result["tasks_kept"] = len(state.tasks)
        return _complete(result)

    if with_state:
        from celery.events.state import State

        cstate = State(max_tasks_in_memory=10_000)
        handle = cstate.event
    else:

        def handle(event: Any) -> None:
            pass

    result = run_celery(
        spec,
        stream,
        handle,
        queue_ttl=RECEIVE_QUEUE_TTL if amqp else None,
        backlog=spec.get("backlog", True),
    )
    if with_state:
        result["tasks_kept"] = len(cstate.tasks)
    return _complete(result)


def _complete(result: dict[str, Any]) -> dict[str, Any]:
    """*result*, if every published event was received: a rate over part of the stream
    would measure nothing (the broker cut the subscriber off, e.g. Redis's pub/sub
    ``client-output-buffer-limit`` for a receiver too far behind)."""
    sent = result.get("published")
    if isinstance(sent, int) and result["received"] < sent:
        raise RuntimeError(
            f"received {result['received']} of {sent} events: the stream was cut short"
        )
    return result
