"""Shared fixtures: real-broker availability (skip locally, fail under CI=true)."""

from __future__ import annotations

import os
import socket

import pytest

AMQP_URL = os.environ.get("AIOCELEV_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("AIOCELEV_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_ENDPOINTS = {"amqp": ("127.0.0.1", 5672), "redis": ("127.0.0.1", 6379)}


def broker_reachable(kind: str) -> bool:
    host, port = _ENDPOINTS[kind]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_broker(kind: str) -> None:
    """Skip (locally) or fail (with CI=true) when the real broker is unreachable."""
    if broker_reachable(kind):
        return
    host, port = _ENDPOINTS[kind]
    reason = f"{kind} broker not reachable on {host}:{port}"
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
