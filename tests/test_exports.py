"""The public API: sorted, importable, documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

import aiocelev
import aiocelev.brokers
import aiocelev.cli
import aiocelev.testing

PUBLIC_MODULES = [aiocelev, aiocelev.brokers, aiocelev.testing, aiocelev.cli]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_unique(module: object) -> None:
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert names == sorted(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_name_is_importable(module: object) -> None:
    name = module.__name__  # type: ignore[attr-defined]
    fresh = importlib.import_module(name)
    for attr in fresh.__all__:
        assert hasattr(fresh, attr), f"{name}.{attr} is in __all__ but missing"
        namespace: dict[str, object] = {}
        exec(f"from {name} import {attr}", namespace)
        assert namespace[attr] is getattr(fresh, attr)


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from aiocelev import *", namespace)
    assert set(aiocelev.__all__) <= set(namespace)


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_name_is_documented(module: object) -> None:
    assert inspect.getdoc(module), f"{module} has no docstring"
    undocumented = []
    for attr in module.__all__:  # type: ignore[attr-defined]
        obj = getattr(module, attr)
        if attr == "__version__":
            assert isinstance(obj, str) and obj
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
            continue  # constants, aliases
        if not (obj.__doc__ or "").strip():
            undocumented.append(attr)
        if inspect.isclass(obj):
            for member_name, member in vars(obj).items():
                if member_name.startswith("_"):
                    continue
                is_api = inspect.isfunction(member) or isinstance(member, property)
                if is_api and not (member.__doc__ or "").strip():
                    undocumented.append(f"{attr}.{member_name}")
    assert undocumented == []


def test_public_objects_do_not_report_private_modules() -> None:
    # what help() and tracebacks show: aiocelev.EventReceiver, not aiocelev._receiver.EventReceiver
    for attr in aiocelev.__all__:
        obj = getattr(aiocelev, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert not obj.__module__.startswith("aiocelev._"), (attr, obj.__module__)


def test_version() -> None:
    assert isinstance(aiocelev.__version__, str)
    assert aiocelev.__version__[0].isdigit()


def test_task_handle_api_is_public() -> None:
    # The call-driven task API that framework integrations build on.
    assert {"TaskHandle", "TaskStateError"} <= set(aiocelev.__all__)
    assert issubclass(aiocelev.TaskStateError, aiocelev.ClosedError)
    for member in ("received", "started", "succeeded", "failed", "retried", "revoked"):
        assert inspect.iscoroutinefunction(getattr(aiocelev.TaskHandle, member)), member
    for member in ("rejected", "send_event"):
        assert inspect.iscoroutinefunction(getattr(aiocelev.TaskHandle, member)), member
    assert not inspect.iscoroutinefunction(aiocelev.TaskHandle.abandon)
    assert callable(aiocelev.WorkerInstrument.begin_task)
