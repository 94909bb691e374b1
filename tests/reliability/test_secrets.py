"""Passwords never appear in logs, reprs, error messages or tracebacks (dispatcher,
receiver, both adapters); TLS on Redis (an own ``rediss://`` server) and ``amqps://``
option parsing."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import redis.asyncio as aioredis

from aiocelev import BrokerConnectionError, EventDispatcher, EventReceiver
from aiocelev.brokers import open_broker

from ..brokers._redis import make_tls_files, redis_processes

pytestmark = pytest.mark.timeout(60)

PASSWORD = "N0t-the/P@ss;word"  # characters that must be percent-encoded in a URL
QUOTED = quote(PASSWORD, safe="")


def _leaks(*texts: str) -> list[str]:
    """The texts that show the password, raw or percent-encoded."""
    return [t for t in texts if PASSWORD in t or QUOTED in t or "N0t-the" in t]


def _everything_about(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


async def _check_refused(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A receiver and a dispatcher on *url* (wrong password): nothing shows it."""
    caplog.set_level(logging.DEBUG)
    receiver = EventReceiver(url, connect_timeout=1.0)
    with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as info:
        async with receiver:
            pass
    dispatcher = EventDispatcher(url, close_timeout=0.3)
    with anyio.fail_after(20):
        async with dispatcher:
            await dispatcher.send("worker-heartbeat", freq=2.0)
            with anyio.move_on_after(0.5):
                await dispatcher.flush()
    broker = open_broker(url)
    with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as direct:
        await broker.connect()
    await broker.aclose()
    texts = [
        _everything_about(info.value),
        _everything_about(direct.value),
        repr(receiver),
        repr(dispatcher),
        repr(broker),
        broker.url,
        caplog.text,
        "\n".join(str(r.args) for r in caplog.records),
    ]
    assert not _leaks(*texts)
    assert "***" in caplog.text  # the URL is shown, masked
    assert "***" in str(info.value) or "***" in str(info.value.__cause__)


@pytest.mark.amqp
async def test_amqp_wrong_password_never_shown(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _check_refused(f"amqp://guest:{QUOTED}@127.0.0.1:5672//", caplog)


@pytest.mark.redis
async def test_redis_wrong_password_never_shown(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_processes() as spawn:
        server = spawn("--requirepass", "the-real-one")
        await _check_refused(f"redis://:{QUOTED}@127.0.0.1:{server.port}/0", caplog)


@pytest.mark.redis
async def test_redis_password_masked_while_working_and_reconnecting(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The right password: events flow; a killed connection is logged, masked."""
    caplog.set_level(logging.DEBUG)
    with redis_processes() as spawn:
        server = spawn("--requirepass", PASSWORD)
        url = f"redis://:{QUOTED}@127.0.0.1:{server.port}/0"
        options = {"reconnect_delay": 0.05, "reconnect_max_delay": 0.3}
        async with (
            EventReceiver(url, routing_keys=["worker.#"], broker_options=options) as receiver,
            EventDispatcher(url, broker_options=options) as dispatcher,
        ):
            await dispatcher.send("worker-heartbeat", freq=2.0, n=0)
            with anyio.fail_after(10):
                await receiver.receive()
            admin = aioredis.Redis(port=server.port, password=PASSWORD, protocol=2)
            try:
                await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            finally:
                await admin.aclose()
            with anyio.fail_after(20):
                n = 1
                while True:
                    await dispatcher.send("worker-heartbeat", freq=2.0, n=n)
                    with anyio.move_on_after(0.2):
                        if (await receiver.receive())["n"] >= 1:
                            break
                    n += 1
            texts = [repr(receiver), repr(dispatcher), repr(receiver.broker), dispatcher.broker.url]
    assert "reconnect" in caplog.text or "lost" in caplog.text
    assert not _leaks(*texts, caplog.text)


@pytest.mark.redis
async def test_rediss_with_password_and_certificate_verification(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An own TLS redis-server (``--tls-port``) with a password: events flow over
    ``rediss://`` with ``ssl_cert_reqs=required`` and ``ssl_ca_certs``; without the CA
    the certificate is refused with a BrokerConnectionError that does not show the
    password.  (The adapter's own TLS test: tests/brokers/test_redis.py::
    test_rediss_with_certificate_verification.)"""
    caplog.set_level(logging.DEBUG)
    files = make_tls_files(tmp_path)
    with redis_processes() as spawn:
        server = spawn(
            "--port", "0", "--tls-port", "{port}", "--tls-cert-file", files["server"],
            "--tls-key-file", files["key"], "--tls-ca-cert-file", files["ca"],
            "--tls-auth-clients", "no", "--requirepass", PASSWORD,
        )  # fmt: skip
        base = f"rediss://:{QUOTED}@127.0.0.1:{server.port}/0"
        url = f"{base}?ssl_cert_reqs=required&ssl_ca_certs={files['ca']}"
        async with (
            EventReceiver(url, routing_keys=["worker.#"]) as receiver,
            EventDispatcher(url) as dispatcher,
        ):
            await dispatcher.send("worker-heartbeat", freq=2.0, n=7)
            with anyio.fail_after(10):
                event = await receiver.receive()
            assert event["n"] == 7
            texts = [repr(receiver), repr(dispatcher)]
        untrusted = EventReceiver(
            base, connect_timeout=0.5, broker_options={"ssl_cert_reqs": "required"}
        )
        with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as info:
            async with untrusted:
                pass
    assert "certificate" in _everything_about(info.value).lower()
    assert not _leaks(*texts, _everything_about(info.value), caplog.text)


def test_amqps_options_are_parsed_and_passed_to_the_client() -> None:
    """RabbitMQ TLS needs a server configured for it (not done on the shared test
    server): the URL and its TLS options are checked here, the TLS handshake against
    a plain port in tests/brokers/test_amqp.py::test_tls_to_a_plain_port_is_a_connection_error."""
    from aiocelev.brokers.amqp import from_url

    url = (
        f"amqps://app:{QUOTED}@rabbit.example/prod?cafile=/etc/ca.pem"
        "&certfile=/etc/client.pem&keyfile=/etc/client.key&no_verify_ssl=0"
    )
    broker = from_url(url)
    (endpoint,) = broker._endpoints
    assert endpoint.ssl
    assert endpoint.url.startswith("amqps://app:")
    assert ":5671/prod?" in endpoint.url
    for option in ("cafile=%2Fetc%2Fca.pem", "certfile=%2Fetc%2Fclient.pem",
                   "keyfile=%2Fetc%2Fclient.key", "no_verify_ssl=0"):  # fmt: skip
        assert option in endpoint.url, option
    assert not _leaks(broker.url, repr(broker), endpoint.masked)
    assert broker.url.startswith("amqps://app:***@rabbit.example")
    # through open_broker (what EventDispatcher / EventReceiver do with a URL)
    assert open_broker(url)._endpoints[0].url == endpoint.url  # type: ignore[attr-defined]
    receiver = EventReceiver(url)
    assert not _leaks(repr(receiver))
