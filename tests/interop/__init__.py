"""Interoperability tests against real Celery code (workers, receivers, State)."""
