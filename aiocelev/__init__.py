"""aiocelev: Celery's monitoring event bus, natively in asyncio."""
from ._version import __version__ as __version__
