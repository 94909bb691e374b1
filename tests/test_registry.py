"""open_broker / register_broker: scheme lookup, helpful errors, lazy optional extras."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from aiocelev import (
    ConfigurationError,
    MissingDependencyError,
    UnknownSchemeError,
    open_broker,
    register_broker,
)
from aiocelev.brokers import _registry, known_schemes
from aiocelev.brokers.memory import MemoryBroker


@pytest.fixture(autouse=True)
def _isolated_custom_schemes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_custom", {})


def test_memory_scheme() -> None:
    broker = open_broker("memory://")
    assert isinstance(broker, MemoryBroker)
    assert broker.url == "memory://"
    named = open_broker("memory://hub-a?max_queue=5")
    assert isinstance(named, MemoryBroker)
    assert named.url == "memory://hub-a"
    assert isinstance(open_broker("MEMORY://x"), MemoryBroker)  # schemes are case-insensitive


def test_memory_options() -> None:
    with pytest.raises(ConfigurationError, match="bogus"):
        open_broker("memory://", bogus=1)
    with pytest.raises(ConfigurationError, match="max_queue"):
        open_broker("memory://?max_queue=lots")
    with pytest.raises(ConfigurationError, match="max_queue"):
        open_broker("memory://", max_queue=0)


def test_unknown_scheme_names_known_schemes_and_suggests() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        open_broker("memroy://")
    text = str(info.value)
    for scheme in ("memory", "amqp", "redis"):
        assert scheme in text
    assert "Did you mean 'memory'" in text
    with pytest.raises(UnknownSchemeError) as info:
        open_broker("rediss+x://h")
    assert "known schemes" in str(info.value)


def test_unknown_scheme_without_close_match() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        open_broker("zzzzzzzz://host")
    assert "Did you mean" not in str(info.value)
    assert "amqp" in str(info.value)


def test_unknown_scheme_error_masks_password() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        open_broker("nope://user:s3cret@host//")
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


def test_unknown_scheme_is_a_configuration_and_value_error() -> None:
    with pytest.raises(ValueError):
        open_broker("memroy://")
    with pytest.raises(ConfigurationError):
        open_broker("memroy://")


@pytest.mark.parametrize("url", ["", "   "])
def test_empty_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="URL is required"):
        open_broker(url)


def test_not_a_string() -> None:
    with pytest.raises(ConfigurationError):
        open_broker(None)  # type: ignore[arg-type]


def test_url_without_scheme() -> None:
    with pytest.raises(UnknownSchemeError, match="not a broker URL"):
        open_broker("localhost:5672")


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("redis://127.0.0.1:6379/0", "aiocelev.brokers.redis", "redis"),
        ("sentinel://127.0.0.1:26379", "aiocelev.brokers.redis", "redis"),
        ("amqp://guest:guest@127.0.0.1//", "aiocelev.brokers.amqp", "amqp"),
        ("amqps://127.0.0.1//", "aiocelev.brokers.amqp", "amqp"),
    ],
)
def test_missing_extra_says_pip_install(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        open_broker(url)
    assert f"pip install 'aiocelev[{extra}]'" in str(info.value)
    assert "guest:guest" not in str(info.value)
    assert isinstance(info.value, ImportError)


def test_register_broker_with_custom_factory() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def factory(url: str, **options: Any) -> MemoryBroker:
        calls.append((url, options))
        return MemoryBroker("memory://custom")

    register_broker("Custom", factory)
    assert "custom" in known_schemes()
    broker = open_broker("custom://somewhere/x", flavour="vanilla")
    assert isinstance(broker, MemoryBroker)
    assert calls == [("custom://somewhere/x", {"flavour": "vanilla"})]


def test_register_broker_overrides_builtin() -> None:
    sentinel = MemoryBroker("memory://override")
    register_broker("memory", lambda url, **options: sentinel)
    assert open_broker("memory://") is sentinel


@pytest.mark.parametrize("scheme", ["", "x://"])
def test_register_broker_rejects_bad_schemes(scheme: str) -> None:
    with pytest.raises(ConfigurationError):
        register_broker(scheme, MemoryBroker)


def test_failover_list_is_passed_whole() -> None:
    seen: list[str] = []

    def factory(url: str, **options: Any) -> MemoryBroker:
        seen.append(url)
        return MemoryBroker()

    register_broker("fo", factory)
    open_broker("fo://a;fo://b")
    assert seen == ["fo://a;fo://b"]


def test_known_schemes_sorted() -> None:
    schemes = known_schemes()
    assert schemes == sorted(schemes)
    assert {"memory", "amqp", "amqps", "redis", "rediss", "sentinel"} <= set(schemes)
