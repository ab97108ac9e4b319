"""When Python's cyclic garbage collector makes its full passes: when the gateway is idle.

A full pass stops the event loop for as long as it takes to look at every tracked object, and an
open stream keeps about 180 of them alive (tasks, coroutines, the server's and the pipeline's
per-request objects). At a thousand open streams a full pass took 50 to 90 ms on the benchmark
machine: every stream's next event late at once (bench/streaming.py counted it as a stall).

The passes find nothing on meshgate's own request path: it makes no reference cycles
(tests/test_proxy.py::test_calls_leave_no_reference_cycles keeps it so), and a full collection
after a thousand streams found zero unreachable objects. So the young generations keep their
automatic passes (short: only recent objects), and the full pass runs when no request is in
flight, where a pause costs nobody anything, or, under load that never pauses, once every
`interval` seconds so that cycles from elsewhere (a plugin, a library, an error's traceback) are
still reclaimed.

This is for CPython up to 3.13, whose collector has three generations; 3.14's incremental
collector ignores the third threshold, and there this schedule only adds the idle passes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("meshgate.collector")

#: A threshold the third generation's counter never reaches: its automatic passes are off.
_NEVER = 2**31 - 1


class Collector:
    def __init__(self, interval: float, check_every: float = 1.0) -> None:
        self.interval = interval
        self.check_every = check_every
        #: HTTP requests in progress, kept by RequestIdMiddleware.
        self.active = 0
        self.last_full = time.monotonic()
        self._saved_threshold: tuple[int, int, int] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        # What was built at startup (models, config, modules) lives until exit: out of the
        # collector's view, it costs no pass anything.
        gc.collect()
        gc.freeze()
        self.last_full = time.monotonic()
        if self.interval <= 0:
            return  # the interpreter's own schedule
        self._saved_threshold = gc.get_threshold()
        young, middle, _ = self._saved_threshold
        gc.set_threshold(young, middle, _NEVER)
        self._timer = asyncio.get_running_loop().call_later(self.check_every, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def _check(self) -> None:
        now = time.monotonic()
        promoted = gc.get_count()[2] > 0  # young passes moved objects into the old generation
        if promoted and (self.active == 0 or now - self.last_full >= self.interval):
            started = time.perf_counter()
            found = gc.collect()
            pause_ms = (time.perf_counter() - started) * 1000
            log.debug("full collection: %d unreachable, %.1f ms, %d requests in flight", found, pause_ms, self.active)
            self.last_full = now
        self._timer = asyncio.get_running_loop().call_later(self.check_every, self._check)
