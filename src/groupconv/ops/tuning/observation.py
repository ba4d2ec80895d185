"""Checking a decision against the calls it serves: the chosen backend's call time, sampled, against its measurement.

A measurement can be wrong for the process that reads it: taken in another process (the disk cache), in a quiet or
a busy spell, or cold (tuner.Measurement.warm). So the dispatcher times one call in SAMPLE_EVERY of each tuned CPU
problem (the others pay a dict lookup and a counter, well under a microsecond) and keeps the last WINDOW samples. When
their median exceeds RECHECK_RATIO times the measured time (plus RECHECK_SLACK_SECONDS, the cost of a call's Python
around its kernel, which the measurement of the kernel alone does not see), or as soon as a window is full for a
decision measured cold, the problem is measured again, at most MAX_RECHECKS times per problem in a process: a
decision that keeps disagreeing with its calls (a layer whose inputs are never in cache inside a model) is not
measured over and over.

Only CPU calls are sampled: a CUDA kernel runs asynchronously, and timing it would mean waiting for the device.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

SAMPLE_EVERY = 16
WINDOW = 5
RECHECK_RATIO = 1.5
RECHECK_SLACK_SECONDS = 50e-6
MAX_RECHECKS = 2


class Watch:
    """One problem's decision as measured and as observed."""

    __slots__ = ("backend", "measured_seconds", "cold", "calls", "samples", "rechecks", "due")

    def __init__(self, backend: str, measured_seconds: float, cold: bool, rechecks: int):
        self.backend = backend
        self.measured_seconds = measured_seconds
        self.cold = cold
        self.calls = 0
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.rechecks = rechecks  # the measurements this process has made again for the problem
        self.due = False

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        if len(self.samples) < WINDOW or self.rechecks >= MAX_RECHECKS:
            return
        if self.cold or statistics.median(self.samples) > RECHECK_RATIO * self.measured_seconds + RECHECK_SLACK_SECONDS:
            self.due = True


_watches: dict[object, Watch] = {}
_lock = threading.Lock()


def expect(problem, backend: str, measured_seconds: float, cold: bool) -> None:
    """Watch `problem`'s calls on `backend`, measured at `measured_seconds` (`cold`: not in a steady state)."""
    if problem.device_type != "cpu":
        return
    with _lock:
        earlier = _watches.get(problem)
        rechecks = 0 if earlier is None else earlier.rechecks + earlier.due
        _watches[problem] = Watch(backend, measured_seconds, cold, rechecks)


def observed(problem, chosen):
    """The backend to run `problem`'s call on: `chosen`, or on a sampled call `chosen` timing the op it runs; None
    when the observed calls have contradicted the measurement and the problem is to be measured again."""
    watch = _watches.get(problem)
    if watch is None or watch.backend != chosen.name:
        return chosen
    if watch.due:
        return None
    watch.calls += 1
    if watch.calls % SAMPLE_EVERY:
        return chosen
    return TimedBackend(chosen, watch)


def watch_for(problem) -> Watch | None:
    """What is known of `problem`'s observed calls (None: not watched)."""
    return _watches.get(problem)


def unwatch(problem) -> None:
    """Stop watching `problem` (its choice is no longer a measured one)."""
    with _lock:
        _watches.pop(problem, None)


def forget() -> None:
    """Drop every watch (the decisions were forgotten)."""
    with _lock:
        _watches.clear()


class TimedBackend:
    """A backend whose op, run by the caller of the dispatcher, is timed into a watch: the first of its methods that
    returns something (Backend.*_accumulating returns None where it has no kernel for the call, and the caller then
    runs the plain op)."""

    def __init__(self, backend, watch: Watch):
        self._backend = backend
        self._watch = watch
        self._timed = False

    def __getattr__(self, name: str):
        attribute = getattr(self._backend, name)
        if not callable(attribute) or self._timed:
            return attribute

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = attribute(*args, **kwargs)
            if result is not None and not self._timed:
                self._timed = True
                self._watch.add(time.perf_counter() - start)
            return result

        return timed

    def __repr__(self) -> str:
        return f"<timed {self._backend!r}>"
