"""Integrations of async task frameworks with Celery's monitoring event bus.

Each submodule puts one framework's workers and tasks into Flower, ``celery
events``, ``celery inspect`` and aiocelev's own monitors, with one line of set-up:

* :mod:`aiocelev.integrations.taskiq`: a taskiq middleware (``aiocelev[taskiq]``);
* :mod:`aiocelev.integrations.arq`: hooks and task wrappers for arq's
  ``WorkerSettings`` (``aiocelev[arq]``);
* :mod:`aiocelev.integrations.saq`: hooks for SAQ's worker settings (``aiocelev[saq]``).

They share :class:`~aiocelev.integrations.WorkerNode`, which hosts the event
dispatcher and the worker instrument of one worker process in a background task,
so that a framework's separate start-up and shutdown hooks can open and close it.
"""

from __future__ import annotations

from ._node import JobReport as JobReport, WorkerNode as WorkerNode

__all__ = ["JobReport", "WorkerNode"]
