"""The integrations use only aiocelev's public API: no private module, no private attribute.

Read from the source (``ast``), so that it also covers code paths no test runs:
an integration imports aiocelev names from the package (``from .. import X``)
or a public subpackage, and reads a ``_private`` attribute only on itself
(``self._x``/``cls._x``), never on an aiocelev object.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INTEGRATIONS = Path(__file__).resolve().parents[2] / "aiocelev" / "integrations"
SOURCES = sorted(INTEGRATIONS.glob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(source: str) -> list[str]:
    """The private names of aiocelev that *source* (an integration module) reaches."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level >= 2 or module.startswith("aiocelev"):
                # aiocelev itself: no private module, no private name
                parts = module.split(".")
                if any(_private(part) for part in parts):
                    found.append(f"line {node.lineno}: from {'.' * node.level}{module}")
                found += [
                    f"line {node.lineno}: imports {alias.name}"
                    for alias in node.names
                    if _private(alias.name)
                ]
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {alias.name}"
                for alias in node.names
                if alias.name.startswith("aiocelev") and any(map(_private, alias.name.split(".")))
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_integration_uses_only_the_public_api(path: Path) -> None:
    assert violations(path.read_text()) == []


def test_the_check_finds_private_access() -> None:
    source = (
        "from .._task_scope import TaskScope\n"
        "from .. import _private_helper\n"
        "import aiocelev._worker\n"
        "def f(worker, scope):\n"
        "    worker._task_started(scope)\n"
        "    return scope._received, self._own\n"
    )
    assert violations(source) == [
        "line 1: from .._task_scope",
        "line 2: imports _private_helper",
        "line 3: import aiocelev._worker",
        "line 5: worker._task_started",
        "line 6: scope._received",
    ]
    assert SOURCES, INTEGRATIONS
