"""Flower's worker page and ``celery inspect`` see an instrumented asyncio worker answer.

A real Flower process (its ``/api/workers?refresh=1`` runs the same inspect
broadcast as its worker page: stats, registered, active, active_queues, conf...)
and Celery's own ``celery inspect`` CLI talk to a ``worker_events`` node, on
RabbitMQ and on Redis.  A private control namespace keeps other workers of the
shared broker out of the picture.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiocelev import EventDispatcher, worker_events

from ._common import CELERY, ROOT, stop_process

pytestmark = pytest.mark.celery

pytest.importorskip("flower")


@pytest.fixture(
    params=[
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        return json.loads(response.read())


async def test_flower_worker_page_and_celery_inspect_see_an_asyncio_worker(
    broker_url: str, tmp_path: Path
) -> None:
    namespace = f"aiocelev-flower-{uuid.uuid4().hex[:8]}"
    node = f"asyncw-{uuid.uuid4().hex[:8]}@flower"
    port = _free_port()
    env = {
        **os.environ,
        "AIOCELEV_CELERY_BROKER": broker_url,
        "AIOCELEV_CELERY_CONTROL_EXCHANGE": namespace,
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [CELERY, "-A", "tests.interop.celery_app", "flower", "--address=127.0.0.1",
         f"--port={port}", f"--db={tmp_path / 'flower.db'}", "--inspect_timeout=3000"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with (
            EventDispatcher(
                broker_url, hostname=node, broker_options={"control_exchange": namespace}
            ) as dispatcher,
            worker_events(dispatcher, freq=1.0, task_names=["app.declared"]) as worker,
        ):
            with anyio.fail_after(30):
                await worker.wait_control_ready()
            started = anyio.Event()

            async def job() -> None:
                async with worker.task("job-flower", "app.running", args=(1, 2)):
                    started.set()
                    await anyio.sleep_forever()

            async with anyio.create_task_group() as tg:
                tg.start_soon(job)
                await started.wait()

                def refreshed() -> dict[str, Any]:
                    try:
                        data = _get_json(
                            f"http://127.0.0.1:{port}/api/workers?refresh=1&workername={node}"
                        )
                    except OSError:
                        return {}
                    info = data.get(node) if isinstance(data, dict) else None
                    return info if isinstance(info, dict) and "stats" in info else {}

                info: dict[str, Any] = {}
                with anyio.fail_after(60):
                    while not info:
                        info = await anyio.to_thread.run_sync(refreshed)
                        if not info:
                            await anyio.sleep(0.5)
                assert info["stats"]["pid"] == dispatcher.pid
                assert info["stats"]["pool"]["implementation"] == "asyncio"
                assert "app.declared" in info["registered"]
                assert [task["id"] for task in info["active"]] == ["job-flower"]
                assert info["revoked"] == [] and info["reserved"] == []

                # Celery's own CLI, as a user types it.
                inspect = await anyio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [
                            CELERY,
                            "-A",
                            "tests.interop.celery_app",
                            "inspect",
                            "ping",
                            "-d",
                            node,
                            "--timeout",
                            "10",
                        ],
                        cwd=ROOT,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )  # fmt: skip
                )
                assert inspect.returncode == 0, inspect.stdout + inspect.stderr
                assert node in inspect.stdout and "pong" in inspect.stdout
                tg.cancel_scope.cancel()
    finally:
        stop_process(flower)
        log.close()
