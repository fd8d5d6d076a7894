"""How a k2_stream process leaves: SIGTERM and SIGINT ask its loop to stop; it finishes what is in hand first."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM or SIGINT (the supervisor's and a terminal's way to end a process)."""

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
