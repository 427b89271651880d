"""Strictly increasing times, to the microsecond the databases keep.

Several operations in one batch read the same clock value. Where their order matters after a
reload (which usage came after a budget level was set; which of two equal lessons is the newer),
each gets a time one microsecond later than the last, even when the clock stands still.
"""
from __future__ import annotations

from typing import Callable


class Stamps:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.last = 0  # microseconds since the epoch

    def next(self) -> int:
        """Microseconds since the epoch, later than every earlier answer."""
        self.last = max(int(self.clock() * 1_000_000), self.last + 1)
        return self.last
