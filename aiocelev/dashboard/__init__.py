"""``aiocelev.dashboard``: a live web dashboard, Flower-compatible HTTP API and metrics.

Needs the ``dashboard`` extra (``pip install 'aiocelev[dashboard]'``).
:func:`create_app` returns an ASGI application (Starlette): serve it with
uvicorn, or mount it inside a FastAPI/Starlette app.  See ``docs/dashboard.md``.
"""

from __future__ import annotations

try:
    import jinja2 as _jinja2  # noqa: F401
    import prometheus_client as _prometheus_client  # noqa: F401
    import starlette as _starlette  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the environment
    from aiocelev import MissingDependencyError as _Missing

    raise _Missing(
        f"the dashboard needs the 'dashboard' extra ({_exc.name} is missing): "
        "pip install 'aiocelev[dashboard]'"
    ) from _exc

from ._app import create_app as create_app

__all__ = ["create_app"]
