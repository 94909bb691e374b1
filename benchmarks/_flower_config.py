"""Celery configuration for the Flower process of the ``dashboard`` case.

Loaded with ``celery --config benchmarks._flower_config flower``: Flower then
listens on the run's private event exchange (not ``celeryev``, where other
users of a shared broker publish), with the same 120 s queue TTL that the
other receive cases give both sides, so that a backlog never expires while
Flower drains it.
"""

from __future__ import annotations

import os

event_exchange = os.environ["AIOCELEV_BENCH_EXCHANGE"]
event_serializer = "json"
event_queue_ttl = 120.0
event_queue_expires = 60.0
broker_connection_retry_on_startup = True
