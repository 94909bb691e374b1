"""Shared fixtures: real-broker availability (skip locally, fail under CI=true).

The brokers are found at ``AIOCELEV_TEST_AMQP_URL`` / ``AIOCELEV_TEST_REDIS_URL``
(defaults: the local servers on their standard ports); the availability probes
connect to the host and port of those URLs.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

AMQP_URL = os.environ.get("AIOCELEV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("AIOCELEV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "pyamqp": 5672, "redis": 6379, "rediss": 6379}


def broker_address(kind: str) -> tuple[str, int] | str:
    """``(host, port)`` of the configured broker, or a Unix socket path."""
    url = (AMQP_URL if kind == "amqp" else REDIS_URL).split(";")[0].strip()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("unix", "redis+socket"):
        return parts.path
    port = parts.port or _DEFAULT_PORTS.get(scheme, 5672 if kind == "amqp" else 6379)
    return parts.hostname or "localhost", port


def _describe(address: tuple[str, int] | str) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def broker_reachable(kind: str) -> bool:
    address = broker_address(kind)
    try:
        if isinstance(address, str):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(address)
        else:
            with socket.create_connection(address, timeout=2):
                pass
    except OSError:
        return False
    return True


def require_broker(kind: str) -> None:
    """Skip (locally) or fail (with CI=true) when the real broker is unreachable."""
    if broker_reachable(kind):
        return
    reason = f"{kind} broker not reachable on {_describe(broker_address(kind))}"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing broker is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture
def amqp_url() -> str:
    require_broker("amqp")
    return AMQP_URL


@pytest.fixture
def redis_url() -> str:
    require_broker("redis")
    return REDIS_URL
