"""The one way tests wait: re-check a condition each time something happens, never on a timer.

Something happening is an item on a queue the test owns (a fake's ``requests``, a platform's
``calls``) or an `asyncio.Event` being set (which `until` clears before each re-check). A
wait that times out fails with an `AssertionError` naming what did not happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["until"]

T = TypeVar("T")


async def until(
    condition: Callable[[], T],
    wake: asyncio.Queue[Any] | asyncio.Event,
    *,
    within_s: float = 30.0,
    what: str = "",
) -> T:
    """The first truthy value of ``condition()``, re-checked after each wake-up.

    Items taken from a ``wake`` queue are consumed: give it a queue only this wait reads.
    Raises AssertionError ("<what> did not happen within N s") on timeout.
    """
    try:
        async with asyncio.timeout(within_s):
            while True:
                if isinstance(wake, asyncio.Event):
                    wake.clear()
                value = condition()
                if value:
                    return value
                if isinstance(wake, asyncio.Event):
                    await wake.wait()
                else:
                    await wake.get()
    except TimeoutError:
        name = what or getattr(condition, "__name__", repr(condition))
        raise AssertionError(f"{name} did not happen within {within_s:g} s") from None
