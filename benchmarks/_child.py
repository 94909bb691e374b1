"""Child-process entry point: ``python -m benchmarks._child '<json spec>'``.

Runs one measurement (``spec["case"]`` names the module, which must define
``child(spec) -> dict``) in a fresh interpreter and prints its result.
"""

from __future__ import annotations

import importlib
import json
import sys

from ._common import OWNS_EXCHANGE, delete_exchange, emit
from ._patches import apply_from_env


def main() -> None:
    """Run the measurement described by ``sys.argv[1]``."""
    spec = json.loads(sys.argv[1])
    patches = apply_from_env()
    module = importlib.import_module(f"benchmarks.{spec['module']}")
    result = module.child(spec)
    if patches:
        result["patches"] = patches
    emit(result)
    if OWNS_EXCHANGE:
        # Run by hand, not by ``python -m benchmarks``: clean up after ourselves.
        delete_exchange(spec.get("broker", ""))


if __name__ == "__main__":
    main()
