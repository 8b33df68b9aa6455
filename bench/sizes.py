"""Benchmark sizes: the full ones by default, small ones with ``BENCH_QUICK=1``.

The full sizes are the ones the README's figures are measured with; the quick ones are for
checking that a benchmark runs (on a busy machine, or in a hurry).
"""

from __future__ import annotations

import os

__all__ = ["quick", "size"]


def quick() -> bool:
    return os.environ.get("BENCH_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def size(name: str, full: int, small: int) -> int:
    """``BENCH_<NAME>`` if set, else ``small`` in quick mode, else ``full``."""
    explicit = os.environ.get(f"BENCH_{name.upper()}")
    if explicit:
        return int(explicit)
    return small if quick() else full
