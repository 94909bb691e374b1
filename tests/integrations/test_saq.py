"""SAQ with :class:`~aiocelev.integrations.saq.CeleryEvents`, for real.

A ``saq`` worker process on Redis runs jobs that succeed, fail, retry (a failed
job with attempts left) and get cancelled by ``revoke --terminate`` (SAQ's
abort); Flower, Celery's State, ``celery inspect`` and aiocelev see all of it;
SIGTERM sends ``worker-offline``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytest.importorskip("saq")
pytest.importorskip("flower")

from saq import Queue

from ..interop._common import CELERY
from ._harness import Events, Outcomes, exercise, make_bus

pytestmark = [pytest.mark.celery, pytest.mark.redis]

SAQ = str(Path(CELERY).with_name("saq"))


async def test_saq_worker_in_flower_and_celery_state(redis_url: str, tmp_path: Path) -> None:
    bus = make_bus("redis", redis_url)
    name = f"aiocelev-saq-{bus.tag}"
    node = f"saq-{bus.tag}@integration"
    env = {
        "AIOCELEV_SAQ_REDIS": bus.url,
        "AIOCELEV_SAQ_QUEUE": name,
        "AIOCELEV_SAQ_EVENTS": bus.events_url,
        "AIOCELEV_SAQ_NODE": node,
        "AIOCELEV_SAQ_MARKER": str(tmp_path / "own-startup"),
    }
    queue = Queue.from_url(bus.url, name=name)
    await queue.connect()

    async def kick(tmp: Path) -> Outcomes:
        jobs = [
            await queue.enqueue("add", x=2, y=3),
            await queue.enqueue("boom", x=7),
            await queue.enqueue("flaky", path=str(tmp / f"flaky-{uuid.uuid4().hex}"), retries=2),
            await queue.enqueue("hold", path=str(tmp / "hold"), timeout=300),
        ]
        keys = [job.key for job in jobs if job is not None]
        assert len(keys) == 4
        return Outcomes(keys[0], keys[1], keys[2], keys[3])

    def check(events: Events, ids: Outcomes) -> None:
        received = events.of("task-received", ids.ok)[0]
        assert received["name"] == "add" and received["kwargs"] == "{'x': 2, 'y': 3}"
        assert events.of("task-succeeded", ids.ok)[0]["result"] == "5"
        failed = events.of("task-failed", ids.bad)[0]
        assert failed["exception"] == "ValueError('bad value 7')"
        assert "Traceback" in failed["traceback"] and "bad value 7" in failed["traceback"]
        assert events.of("task-retried", ids.flaky)[0]["exception"] == "RuntimeError('try again')"
        assert [e["retries"] for e in events.of("task-received", ids.flaky)] == [0, 1]

    try:
        await exercise(
            bus,
            tmp_path,
            node=node,
            command=[SAQ, "tests.integrations.saq_app.settings"],
            env=env,
            kick=kick,
            registered=["add", "boom", "flaky", "hold"],
            check=check,
        )
    finally:
        await queue.disconnect()
    assert (tmp_path / "own-startup").read_text() == "started"  # the user's hook ran too
