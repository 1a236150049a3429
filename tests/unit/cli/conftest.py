"""Fixtures of the foreground runner's tests (``meshgate.cli._run``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def restored_gc() -> Iterator[None]:
    # The runner settles the heap once serving: the test process's own collector is put back
    # as it was, since other tests share it.
    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
