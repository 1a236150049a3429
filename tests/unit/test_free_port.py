"""The tests' ports: below the kernel's ephemeral range (which port 0 hands out to anyone), a slice
of their own per xdist worker, never the same one twice in a set."""

from __future__ import annotations

import pytest

from tests._servers import _ephemeral_low, _worker_slice, free_port, free_ports


def test_ports_come_from_this_workers_slice_below_the_ephemeral_range() -> None:
    ports = _worker_slice()
    taken = free_ports(20)
    assert len(set(taken)) == 20
    assert all(p in ports and 1024 <= p < _ephemeral_low() for p in taken), taken
    besides = set(taken)
    assert free_port(besides=besides) not in taken and len(besides) == 21


def test_the_workers_slices_do_not_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    slices = []
    for n in range(16):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        slices.append(set(_worker_slice()))
    assert all(len(s) >= 100 for s in slices)
    assert sum(map(len, slices)) == len(set().union(*slices))
