# mypy: allow-untyped-decorators
"""A tiny Celery app for interoperability tests (used by subprocess workers).

The broker URL comes from the environment variable ``AIOCELEV_CELERY_BROKER``
(e.g. ``amqp://guest:guest@127.0.0.1:5672//`` or ``redis://127.0.0.1:6379/0``);
``AIOCELEV_CELERY_CONTROL_EXCHANGE`` and ``AIOCELEV_CELERY_EVENT_EXCHANGE``
optionally override ``control_exchange`` / ``event_exchange`` to isolate a test::

    AIOCELEV_CELERY_BROKER=amqp://... celery -A tests.interop.celery_app worker -E -P solo \
        --without-mingle --without-gossip -n NAME@host -Q QUEUE

Task events are *not* switched on here: start the worker with ``-E`` for them, or
without it to test ``enable_events``.  Tests should give every worker its own
queue (``-Q``) and node name so concurrent test runs on one broker do not mix.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery(
    "aiocelev_interop",
    broker=os.environ.get("AIOCELEV_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=None,
)
app.conf.update(
    task_send_sent_event=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    # Optional isolation from other users of the same broker (e.g. a Flower
    # elsewhere broadcasting enable_events to every worker).
    control_exchange=os.environ.get("AIOCELEV_CELERY_CONTROL_EXCHANGE", "celery"),
    event_exchange=os.environ.get("AIOCELEV_CELERY_EVENT_EXCHANGE", "celeryev"),
)


@app.task(name="interop.add")
def add(x: int, y: int) -> int:
    """Succeeds with ``x + y``."""
    return x + y


@app.task(name="interop.boom")
def boom(x: object) -> None:
    """Always fails with ``ValueError``."""
    raise ValueError(f"bad value {x!r}")


@app.task(name="interop.flaky", bind=True, max_retries=1, default_retry_delay=0.1)
def flaky(self: Any, n: int) -> int:
    """Retries once (``task-retried``), then succeeds with *n*."""
    if self.request.retries < 1:
        raise self.retry(exc=RuntimeError("try again"))
    return n


@app.task(name="interop.slow")
def slow(seconds: float) -> str:
    """Sleeps *seconds*, then succeeds with ``"done"``."""
    time.sleep(seconds)
    return "done"


@app.task(name="interop.hold")
def hold(path: str, limit: float) -> str:
    """Creates ``<path>.started``, then waits until ``<path>.release`` exists
    (at most *limit* seconds) and creates ``<path>.done``: a test decides when it ends."""
    with open(f"{path}.started", "w"):
        pass
    deadline = time.monotonic() + limit
    while not os.path.exists(f"{path}.release") and time.monotonic() < deadline:
        time.sleep(0.02)
    with open(f"{path}.done", "w"):
        pass
    return "released"
