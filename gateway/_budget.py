"""A bound on events in flight: admitted, not yet acked by the broker."""

from __future__ import annotations

from meshgate._quota import FifoQuota

__all__ = ["InflightBudget"]


class InflightBudget(FifoQuota):
    """Counts events in flight against a limit, first come, first served (see ``FifoQuota``).

    A stream waiting for room for a large batch is not starved by small ones, and batches of
    one stream are admitted in the order they arrived; ``wait_idle`` is the drain's wait.
    """
