"""Bounded polling for tests that wait on kernel or another process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 10.0, step: float = 0.02) -> T:
    """Call ``pred`` until it returns something truthy or ``timeout`` seconds pass;
    returns its last value (so ``assert wait_for(...)`` fails on a timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)
