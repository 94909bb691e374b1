"""Benchmarks: aiocelev side by side with Celery's own events code.

Run ``python -m benchmarks --help``; methodology and results are in
``docs/benchmarks.md``.  Every measurement runs in a fresh interpreter
(:mod:`benchmarks._child`); receivers start their publisher as a separate
process (:mod:`benchmarks._stream`).
"""
