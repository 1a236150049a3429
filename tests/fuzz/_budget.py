"""How hard the fuzz tests try: a bounded default run, more with ``FUZZ_EXAMPLES``.

The default keeps ``python -m pytest tests/fuzz`` under a minute on a busy two-core machine;
``FUZZ_EXAMPLES=20000 python -m pytest tests/fuzz`` is a long run (each test takes the larger
of its default and the variable).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["fuzz_settings"]


def fuzz_settings(default: int) -> settings:
    raw = os.environ.get("FUZZ_EXAMPLES", "")
    try:
        wanted = int(raw) if raw else 0
    except ValueError:
        raise ValueError(f"FUZZ_EXAMPLES must be a whole number of examples, got {raw!r}") from None
    return settings(
        max_examples=max(default, wanted),
        # Wall-clock deadlines flake on a shared machine; these tests never assert speed.
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
