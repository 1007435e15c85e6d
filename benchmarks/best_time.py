"""The timing the benchmark scripts share (data.py, score.py): the best wall time of repeated calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_time(fn: Callable[[], Any], repeats: int, *, warm_up: bool = True) -> float:
    """The shortest of ``repeats`` timed calls of ``fn`` (seconds, ``time.perf_counter``), after one
    untimed call first with ``warm_up``."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
