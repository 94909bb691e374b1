"""The package's import graph: layers point one way and nothing imports in a cycle.

The layers are those of docs/architecture.md.  A module may import modules of
its own layer or of a lower one; imports under ``if TYPE_CHECKING:`` are for
annotations only and do not count.  A new module must be placed in a layer
here, so that the rule keeps covering the whole package.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aiocelev"

#: Lowest first: (layer, module patterns relative to the package).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "_exceptions",
            "_version",
            "_url",
            "_saferepr",
            "_clock",
            "_backoff",
            "_lifecycle",
            "_overflow",
            "_time",
            "_link",
        ),
    ),
    ("model", ("_events", "_message", "_codec", "_control")),
    ("brokers", ("brokers", "brokers.*")),
    ("core", ("_dispatcher", "_receiver", "_state", "_state_*", "_control_client")),
    ("instrumentation", ("_worker", "_worker_control", "_task_scope", "_simulation")),
    ("history", ("store", "store.*")),
    ("integrations", ("integrations", "integrations.*")),
    ("surface", ("cli", "cli.*", "dashboard", "dashboard.*", "testing", "__init__", "__main__")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatchcase(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"aiocelev.{module} is in no layer: add it to LAYERS in {__file__}")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path, module: str) -> set[str]:
    """Package modules that *module* imports when it runs (annotation-only imports excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here[: len(here) - (child.level - 1)] if child.level > 1 else list(here)
                    target = [*base, *(child.module.split(".") if child.module else [])]
                elif child.module and child.module.split(".")[0] == "aiocelev":
                    target = child.module.split(".")[1:]
                else:
                    continue
                name = ".".join(target)
                if child.module is None or _known(name) is None:
                    # ``from . import x`` / ``from .pkg import mod``: the names are modules.
                    for alias in child.names:
                        sub = ".".join([*target, alias.name])
                        if _known(sub) is not None:
                            found.add(sub)
                if _known(name) is not None:
                    found.add(name)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "aiocelev" and len(parts) > 1:
                        found.add(".".join(parts[1:]))
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


_ALL = _modules()


def _known(name: str) -> str | None:
    return name if name in _ALL or name == "" else None


def _graph() -> dict[str, set[str]]:
    return {name: _runtime_imports(path, name) for name, path in _ALL.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in _ALL:
        _layer_of(module)


def test_imports_point_down() -> None:
    upward = []
    for module, imports in _graph().items():
        own = _layer_of(module)
        for target in imports:
            if target and _layer_of(target) > own:
                upward.append(
                    f"aiocelev.{module} ({LAYERS[own][0]}) imports aiocelev.{target} "
                    f"({LAYERS[_layer_of(target)][0]})"
                )
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_brokers_import_nothing_above_them() -> None:
    brokers = _layer_of("brokers")
    for module, imports in _graph().items():
        if _layer_of(module) != brokers:
            continue
        above = sorted(t for t in imports if t and _layer_of(t) > brokers)
        assert not above, f"aiocelev.{module} imports {above}"


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(f"aiocelev.{m}" for m in cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rule can fail: an upward import in a broker module is reported."""
    module = tmp_path / "fake.py"
    module.write_text("from .._worker import WorkerInstrument\n", encoding="utf-8")
    imports = _runtime_imports(module, "brokers.fake")
    assert imports == {"_worker"}
    assert _layer_of("_worker") > _layer_of("brokers.fake")
    guarded = tmp_path / "guarded.py"
    guarded.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .._worker import X\n",
        encoding="utf-8",
    )
    assert _runtime_imports(guarded, "brokers.guarded") == set()
