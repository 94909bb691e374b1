"""Real Celery workers for the remote-control interop tests, isolated by namespace.

Every worker of a :class:`ControlCluster` uses the cluster's own
``control_exchange`` and ``event_exchange`` (unique per run), so broadcasts
without a destination reach only these workers, and nothing here reaches
anyone else's workers on the shared brokers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import uuid
from typing import Any

from .._helpers import read_output
from ._common import CELERY, ROOT


class ControlWorker:
    """One ``celery worker`` subprocess (``tests.interop.celery_app``) in a namespace."""

    def __init__(
        self,
        broker_url: str,
        namespace: str,
        event_exchange: str,
        *,
        tag: str,
        pool: str = "solo",
        concurrency: int = 1,
    ) -> None:
        self.broker_url = broker_url
        self.nodename = f"{namespace}-{tag}@interop"
        self.queue = f"{namespace}-{tag}"
        self.namespace = namespace
        self.event_exchange = event_exchange
        self.pool = pool
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    def start(self) -> None:
        cmd = [
            CELERY, "-A", "tests.interop.celery_app", "worker", "-P", self.pool,
            "-c", str(self.concurrency), "-E", "--without-mingle", "--without-gossip",
            "-n", self.nodename, "-Q", self.queue, "--loglevel", "INFO",
        ]  # fmt: skip
        env = {
            **os.environ,
            "AIOCELEV_CELERY_BROKER": self.broker_url,
            "AIOCELEV_CELERY_CONTROL_EXCHANGE": self.namespace,
            "AIOCELEV_CELERY_EVENT_EXCHANGE": self.event_exchange,
        }
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return read_output(self.log)[-6000:]

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it hangs.  Idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            self.log.close()


class ControlCluster:
    """Workers sharing one unique control and event namespace on one broker."""

    def __init__(self, kind: str, broker_url: str) -> None:
        self.kind = kind
        self.broker_url = broker_url
        run = uuid.uuid4().hex[:8]
        self.namespace = f"aiocelev-ctl-{run}"
        self.event_exchange = f"aiocelev-ctlev-{run}"
        self.workers: list[ControlWorker] = []
        self.extra_queues: list[str] = []

    def worker(self, tag: str, *, pool: str = "solo", concurrency: int = 1) -> ControlWorker:
        worker = ControlWorker(
            self.broker_url, self.namespace, self.event_exchange, tag=tag, pool=pool,
            concurrency=concurrency,
        )  # fmt: skip
        self.workers.append(worker)
        return worker

    def celery_client(self) -> Any:
        """A Celery app in this namespace (to send tasks and to check readiness)."""
        from celery import Celery

        app = Celery("aiocelev_control_client", broker=self.broker_url, set_as_current=False)
        app.conf.control_exchange = self.namespace
        app.conf.event_exchange = self.event_exchange
        app.conf.broker_connection_retry_on_startup = True
        return app

    def wait_ready(self, *workers: ControlWorker, timeout: float = 60) -> None:
        """Wait until each worker answers Celery's own ping (its pidbox is live)."""
        app = self.celery_client()
        try:
            for worker in workers:
                deadline = time.monotonic() + timeout
                while True:
                    if worker.exited():
                        raise AssertionError(f"worker exited early:\n{worker.output()}")
                    if app.control.ping(destination=[worker.nodename], timeout=0.5):
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(f"worker never answered ping:\n{worker.output()}")
        finally:
            app.close()

    def cleanup(self) -> None:
        """Stop every worker and remove what they declared on the broker."""
        for worker in self.workers:
            worker.close()
        queues = [w.queue for w in self.workers] + self.extra_queues
        if self.kind == "amqp":
            _amqp_cleanup(
                self.broker_url,
                queues,
                [*queues, f"{self.namespace}.pidbox", f"reply.{self.namespace}.pidbox",
                 self.event_exchange],
            )  # fmt: skip
        else:
            _redis_cleanup(self.broker_url, queues, self.namespace, self.event_exchange)


def _amqp_cleanup(url: str, queues: list[str], exchanges: list[str]) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        for name in queues:
            with contextlib.suppress(Exception), conn.channel() as channel:
                channel.queue_delete(name)
        for name in exchanges:
            with contextlib.suppress(Exception), conn.channel() as channel:
                channel.exchange_delete(name)


def _redis_cleanup(url: str, queues: list[str], namespace: str, event_exchange: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys: list[Any] = []
        for name in queues:
            keys += [name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}"]
        for pattern in (f"*{namespace}*", f"*{event_exchange}*"):
            keys += list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
