"""Stopping a run cleanly on a signal: SIGTERM (kill, cluster preemption), SIGINT (Ctrl-C),
SIGUSR1 and SIGUSR2 (SLURM's and submitit's signals before a time limit).

While :class:`StopSignals` is active (``runner.py``: the whole command, from planning the run to
its exit status), these signals never end the process by themselves:

* by default a signal only sets ``requested``; the training loop polls it after every step (a safe
  point), writes a checkpoint and raises :class:`RunInterrupted`;
* inside :meth:`StopSignals.immediately` (phases with nothing to save: building the model, loading
  the data, the final test after the last checkpoint) the first signal raises
  :class:`RunInterrupted` at once, from wherever the phase is (as Ctrl-C's KeyboardInterrupt would,
  but past ``except Exception`` clauses: it travels as a BaseException until the phase's end).

Every later signal is only logged: a second Ctrl-C or SIGTERM while the run writes its checkpoint
and status changes nothing. ``StopSignals(ignore_after_stop=True)`` keeps ignoring them after the
context ends, once a stop was requested (the process is then ending: exit status 3). A handler
that was installed before (submitit's, which requeues the job on SIGUSR2) is called by
:meth:`RunInterrupted.hand_over` once the checkpoint and the run's status are written.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class RunInterrupted(Exception):
    """A signal stopped the run (at a safe point after writing a checkpoint, or in a phase with
    nothing to save)."""

    signum: int | None = None
    previous: Any = None  # the signal's handler before StopSignals

    def hand_over(self) -> None:
        """Call the handler the signal had before, if it was a Python function other than
        Ctrl-C's default (e.g. submitit's, which requeues the job and ends the process)."""
        if callable(self.previous) and self.previous is not signal.default_int_handler:
            self.previous(self.signum, None)


class _StopNow(BaseException):
    """Raised by the signal handler inside :meth:`StopSignals.immediately`; a BaseException so
    that no ``except Exception`` on the way turns it into another error."""


class StopSignals:
    """Context manager: the stop signals set ``received`` (the signal's name) instead of ending
    the process. Outside the main thread (signals cannot be handled there) it does nothing."""

    def __init__(self, ignore_after_stop: bool = False) -> None:
        self.received: str | None = None
        self.ignore_after_stop = ignore_after_stop
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._immediate = False

    @property
    def requested(self) -> bool:
        return self.received is not None

    def interruption(self, message: str) -> RunInterrupted:
        """A RunInterrupted for the signal received, carrying the handler it had before."""
        error = RunInterrupted(message)
        error.signum, error.previous = self._signal, self._previous.get(self._signal)
        return error

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("%s received: the run is already stopping (after %s)", name, self.received)
            return
        self.received, self._signal = name, signum
        if self._immediate:
            self._immediate = False
            log.warning("%s received: stopping now", name)
            raise _StopNow
        log.warning("%s received: stopping after the current step", name)

    @contextlib.contextmanager
    def immediately(self, where: str) -> Iterator[None]:
        """A phase that a stop signal ends at once (also one received before it starts), with
        RunInterrupted("stopped by SIGNAL ``where``")."""
        try:
            if self.requested:
                raise _StopNow
            self._immediate = True
            try:
                yield
            finally:
                self._immediate = False
        except _StopNow:
            raise self.interruption(f"stopped by {self.received} {where}") from None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, RunInterrupted) and exc.signum is None:
            exc.signum, exc.previous = self._signal, self._previous.get(self._signal)
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if self.ignore_after_stop and self.requested else previous)
        self._previous.clear()
