"""Stopping a run cleanly on a signal: SIGTERM (kill, cluster preemption), SIGINT (Ctrl-C),
SIGUSR1 and SIGUSR2 (SLURM's and submitit's signals before a time limit).

While :class:`StopSignals` is active, these signals only set ``requested``; the training loop
polls it after every step (a safe point), writes a checkpoint and raises :class:`RunInterrupted`.
A handler that was installed before (submitit's, which requeues the job on SIGUSR2) is called
by :meth:`RunInterrupted.hand_over` once the checkpoint and the run's status are written.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class RunInterrupted(Exception):
    """A signal stopped the run at a safe point after writing a checkpoint."""

    signum: int | None = None
    previous: Any = None  # the signal's handler before StopSignals

    def hand_over(self) -> None:
        """Call the handler the signal had before, if it was a Python function other than
        Ctrl-C's default (e.g. submitit's, which requeues the job and ends the process)."""
        if callable(self.previous) and self.previous is not signal.default_int_handler:
            self.previous(self.signum, None)


class StopSignals:
    """Context manager: the stop signals set ``received`` (the signal's name) instead of ending
    the process. Outside the main thread (signals cannot be handled there) it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
        self.received, self._signal = signal.Signals(signum).name, signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, RunInterrupted):
            exc.signum, exc.previous = self._signal, self._previous.get(self._signal)
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
