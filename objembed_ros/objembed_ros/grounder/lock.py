"""The model lock: one image or text pass at a time, and requests never convoy behind frames.

A plain lock lets the frame worker, which re-takes it right after each frame, win every
race against a service thread woken by the release: a new query could wait many frame
passes. Here a caller that is waiting for a request pass (a text pass, supplied boxes, a
query image) goes before the NEXT frame pass, so it waits at most for the pass in progress
plus the other waiting requests (which are short). Frame passes wait while any request
waits. Pure threading; no torch.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from objembed_ros.core.errors import InputError, ModelBusy

MAX_WAIT_STEP_S = 60.0  # Condition.wait overflows on huge timeouts: wait in steps


class ModelLock:
    """A non-reentrant lock with two classes of holders: requests go before frames."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._requests_waiting = 0

    @property
    def requests_waiting(self) -> int:
        """How many request passes wait for the model now (for tests and diagnostics)."""
        with self._cond:
            return self._requests_waiting

    def acquire(self, request: bool, deadline: float | None = None) -> bool:
        """Take the lock; False when `deadline` (time.monotonic()) passes first.

        request: True for a pass a caller waits on (goes before frames), False for a frame.
        deadline: None or +inf waits as long as it takes; NaN is an InputError.
        """
        if deadline is not None and math.isnan(deadline):
            raise InputError("deadline is NaN")
        with self._cond:
            if request:
                self._requests_waiting += 1
            try:
                while self._held or (not request and self._requests_waiting):
                    if deadline is None:
                        self._cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, MAX_WAIT_STEP_S))
                self._held = True
                return True
            finally:
                if request:
                    self._requests_waiting -= 1
                    if not self._requests_waiting:
                        self._cond.notify_all()  # a frame may wait for the last request

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("ModelLock released while not held")
            self._held = False
            self._cond.notify_all()

    @contextmanager
    def hold(self, request: bool, deadline: float | None = None) -> Iterator[None]:
        """Hold the lock for one pass; ModelBusy when the deadline passes first."""
        if not self.acquire(request, deadline):
            raise ModelBusy("timeout: the model stayed busy (a frame or another request "
                            "pass) past the deadline")
        try:
            yield
        finally:
            self.release()
