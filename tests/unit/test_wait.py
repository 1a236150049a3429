"""tests/_wait.py: the tests' one polling helper is bounded and says what it waited for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._wait import eventually


async def test_bounded_and_names_what_it_waited_for() -> None:
    calls = 0

    def never() -> bool:
        nonlocal calls
        calls += 1
        return False

    with pytest.raises(AssertionError, match=r"timed out after 0\.3 s waiting for nothing; last value: False$"):
        await eventually(never, 0.3, interval=0.05, what="nothing")
    assert calls >= 3


async def test_returns_the_first_truthy_value_sync_or_async() -> None:
    assert await eventually(lambda: 42, 1, what="a constant") == 42
    values: Iterator[str | int | list[str] | None] = iter([None, 0, [], "ready"])

    async def next_value() -> str | int | list[str] | None:
        return next(values)

    assert await eventually(next_value, 5, interval=0.01, what="the fourth value") == "ready"


async def test_transient_errors_are_not_yet_others_fail_at_once() -> None:
    attempts = 0

    def refused_twice() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise ConnectionRefusedError("not listening yet")
        return True

    assert await eventually(refused_twice, 5, interval=0.01, what="the server")
    assert attempts == 3

    def broken() -> bool:
        raise KeyError("a bug in the test, not a state to wait out")

    with pytest.raises(KeyError):
        await eventually(broken, 5, what="never")


async def test_timeout_shows_the_last_error_and_the_status() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(
        AssertionError, match=r"waiting for the port; last value: ConnectionRefusedError.*now: closed"
    ) as info:
        await eventually(refused, 0.1, interval=0.02, what="the port", status=lambda: "closed")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
