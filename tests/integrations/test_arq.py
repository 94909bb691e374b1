"""arq with :class:`~aiocelev.integrations.arq.CeleryEvents`, for real.

An ``arq`` worker process on Redis runs jobs that succeed, fail, retry
(``raise Retry``) and get cancelled by ``revoke --terminate`` (arq's abort);
Flower, Celery's State, ``celery inspect`` and aiocelev see all of it; SIGTERM
sends ``worker-offline``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

pytest.importorskip("arq")
pytest.importorskip("flower")

from arq import create_pool
from arq.connections import RedisSettings

from ..interop._common import CELERY
from ._harness import Events, Outcomes, exercise, make_bus

pytestmark = [pytest.mark.celery, pytest.mark.redis]

ARQ = str(Path(CELERY).with_name("arq"))


async def test_arq_worker_in_flower_and_celery_state(redis_url: str, tmp_path: Path) -> None:
    bus = make_bus("redis", redis_url)
    queue = f"aiocelev-arq-{bus.tag}"
    node = f"arq-{bus.tag}@integration"
    env = {
        "AIOCELEV_ARQ_REDIS": bus.url,
        "AIOCELEV_ARQ_QUEUE": queue,
        "AIOCELEV_ARQ_EVENTS": bus.events_url,
        "AIOCELEV_ARQ_NODE": node,
        "AIOCELEV_ARQ_MARKER": str(tmp_path / "own-startup"),
    }
    pool = await create_pool(RedisSettings.from_dsn(bus.url), default_queue_name=queue)

    async def kick(tmp: Path) -> Outcomes:
        ids = []
        for function, args in (
            ("add", (2, 3)),
            ("boom", (7,)),
            ("flaky", (str(tmp / f"flaky-{uuid.uuid4().hex}"),)),
            ("hold", (str(tmp / "hold"),)),
        ):
            job = await pool.enqueue_job(function, *args)
            assert job is not None
            ids.append(job.job_id)
        return Outcomes(ids[0], ids[1], ids[2], ids[3])

    def check(events: Events, ids: Outcomes) -> None:
        received = events.of("task-received", ids.ok)[0]
        assert received["name"] == "add" and received["args"] == "(2, 3)"
        assert events.of("task-succeeded", ids.ok)[0]["result"] == "5"
        failed = events.of("task-failed", ids.bad)[0]
        assert failed["exception"] == "ValueError('bad value 7')"
        assert "Traceback" in failed["traceback"]
        assert events.of("task-retried", ids.flaky)[0]["exception"].startswith("<Retry")
        assert [e["retries"] for e in events.of("task-received", ids.flaky)] == [0, 1]

    try:
        await exercise(
            bus,
            tmp_path,
            node=node,
            command=[ARQ, "tests.integrations.arq_app.WorkerSettings"],
            env=env,
            kick=kick,
            registered=["add", "boom", "flaky", "hold"],
            check=check,
        )
    finally:
        await pool.aclose()
    assert (tmp_path / "own-startup").read_text() == "started"  # the user's hook ran too
