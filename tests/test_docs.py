"""Every ```python block of README.md and docs/**/*.md runs as written.

Each block runs in a fresh interpreter (``python -c``, from the repository root)
and must exit with status 0 within :data:`TIMEOUT` seconds.  A block whose code
names a RabbitMQ or Redis URL runs against the real local broker (marked
``amqp`` / ``redis``: skipped locally without the broker, a failure with
``CI=true``); ``memory://`` blocks run anywhere.  A block that needs an optional
extra which is not installed is skipped locally and fails with ``CI=true``.

When ``AIOCELEV_TEST_AMQP_URL`` / ``AIOCELEV_TEST_REDIS_URL`` point elsewhere,
the documented local URLs are replaced by them; otherwise the code runs
byte for byte as the reader sees it.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import AMQP_URL, IN_CI, REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

#: Seconds one block may run.
TIMEOUT = 60.0

#: Languages collected and run.
PYTHON_LANGUAGES = frozenset({"python", "py"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")

#: The broker URLs the documentation uses, by broker kind.
DOCUMENTED_URLS = {
    "amqp": ("amqp://guest:guest@localhost:5672//", "amqp://guest:guest@127.0.0.1:5672//"),
    "redis": ("redis://localhost:6379/0", "redis://127.0.0.1:6379/0"),
}

#: A URL in the code (not in a comment) that needs this broker kind.
_BROKER_SCHEMES = {
    "amqp": re.compile(r"\b(?:amqps?|pyamqp)://"),
    "redis": re.compile(r"\b(?:rediss?|redis\+socket)://"),
}

#: Optional extras: the modules each provides, and what in a block's code needs it.
EXTRAS: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "amqp": (("aio_pika",), re.compile(r"\b(?:amqps?|pyamqp)://|aiocelev\.brokers\.amqp|aio_pika")),
    "redis": (
        ("redis",),
        re.compile(r"\b(?:rediss?|redis\+socket|sentinel)://|aiocelev\.brokers\.redis|\bredis\."),
    ),
    "cli": (("rich",), re.compile(r"aiocelev\.cli|\brich\b")),
    "dashboard": (
        ("starlette", "uvicorn", "jinja2", "prometheus_client"),
        re.compile(r"aiocelev\.dashboard|\bstarlette\b|\buvicorn\b"),
    ),
    "taskiq": (
        ("taskiq",),
        re.compile(r"aiocelev\.integrations\.taskiq|^\s*(?:from|import) taskiq", re.M),
    ),
    "arq": (("arq",), re.compile(r"aiocelev\.integrations\.arq|^\s*(?:from|import) arq\b", re.M)),
    "saq": (("saq",), re.compile(r"aiocelev\.integrations\.saq|^\s*(?:from|import) saq\b", re.M)),
    "postgres": (("asyncpg",), re.compile(r"postgres(?:ql)?://")),
}


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # the line of the opening fence
    code: str = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def fenced_blocks(path: Path) -> list[tuple[int, str, str]]:
    """``(line of the opening fence, info string, body)`` of every fenced block in *path*."""
    blocks: list[tuple[int, str, str]] = []
    opening: re.Match[str] | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _FENCE.match(line)
        if opening is None:
            if match:
                opening, start, body = match, number, []
            continue
        fence = opening["fence"]
        closing = (
            match is not None
            and match["fence"][0] == fence[0]
            and len(match["fence"]) >= len(fence)
            and not match["info"].strip()
        )
        if closing:
            blocks.append((start, opening["info"].strip(), textwrap.dedent("\n".join(body))))
            opening = None
            continue
        body.append(line)
    assert opening is None, f"{path}:{start}: unclosed code fence"
    return blocks


def collect() -> list[Snippet]:
    return [
        Snippet(path, line, code)
        for path in DOC_FILES
        for line, info, code in fenced_blocks(path)
        if info.split(maxsplit=1)[:1] and info.split()[0].lower() in PYTHON_LANGUAGES
    ]


def code_without_comments(code: str) -> str:
    """*code* with its comments removed (a URL in a comment does not need a broker)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return code
    return " ".join(tok.string for tok in tokens if tok.type != tokenize.COMMENT)


def brokers_needed(code: str) -> list[str]:
    text = code_without_comments(code)
    return [kind for kind, pattern in _BROKER_SCHEMES.items() if pattern.search(text)]


def extras_needed(code: str) -> list[str]:
    text = code_without_comments(code)
    return [name for name, (_, pattern) in EXTRAS.items() if pattern.search(text)]


SNIPPETS = collect()


def _param(snippet: Snippet) -> object:
    marks = [getattr(pytest.mark, kind) for kind in brokers_needed(snippet.code)]
    return pytest.param(snippet, id=snippet.id, marks=marks)


def _require_extras(code: str) -> None:
    for extra in extras_needed(code):
        modules, _ = EXTRAS[extra]
        missing = [module for module in modules if importlib.util.find_spec(module) is None]
        if missing:
            reason = f"needs aiocelev[{extra}] ({', '.join(missing)} not installed)"
            if IN_CI:
                pytest.fail(f"{reason}; CI=true: the test command installs every extra")
            pytest.skip(reason)


def _configured(code: str) -> str:
    """Point the documented broker URLs at the configured test brokers, if overridden."""
    for kind, env, url in (
        ("amqp", "AIOCELEV_TEST_AMQP_URL", AMQP_URL),
        ("redis", "AIOCELEV_TEST_REDIS_URL", REDIS_URL),
    ):
        if os.environ.get(env):
            for documented in DOCUMENTED_URLS[kind]:
                code = code.replace(documented, url)
    return code


def test_snippets_are_found() -> None:
    assert len(SNIPPETS) >= 10, [s.id for s in SNIPPETS]


def test_every_fence_names_its_language() -> None:
    # A block without a language could be Python that escapes this test: name it
    # (```python, ```console, ```text...).
    bare = [
        f"{path.relative_to(ROOT).as_posix()}:{line}"
        for path in DOC_FILES
        for line, info, _ in fenced_blocks(path)
        if not info
    ]
    assert bare == []


@pytest.mark.parametrize("snippet", [_param(s) for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, request: pytest.FixtureRequest) -> None:
    for kind in brokers_needed(snippet.code):
        request.getfixturevalue(f"{kind}_url")  # skip locally / fail in CI if unreachable
    _require_extras(snippet.code)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    timed_out: subprocess.TimeoutExpired | None = None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _configured(snippet.code)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        timed_out = exc
    if timed_out is not None:
        pytest.fail(f"{snippet.id}: still running after {TIMEOUT:g}s\n{_show(snippet, timed_out)}")
    assert done.returncode == 0, (
        f"{snippet.id} exited with {done.returncode}\n{_show(snippet, done)}"
    )


def _show(snippet: Snippet, done: object) -> str:
    numbered = "\n".join(
        f"{snippet.line + n:5d} | {line}" for n, line in enumerate(snippet.code.splitlines(), 1)
    )
    out = getattr(done, "stdout", None) or ""
    err = getattr(done, "stderr", None) or ""
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    return f"--- code\n{numbered}\n--- stdout\n{out}\n--- stderr\n{err}"
