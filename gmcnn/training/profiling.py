"""Wall time per phase of a run (``trainer.profile=true``; docs/design.md §6).

The engine wraps each phase of an epoch in ``times.phase(name)``: the training steps, the whole
training loop (whose remainder is data loading and the loop's own bookkeeping), the batch-norm
recalibration, validation, the scheduler, the best.pt and last.pt checkpoints (atomic writes with
fsync), and the metrics files and logger; and, once per run, the final test with the equivariance
metric. On CUDA a phase synchronises the device at its ends, so that queued kernels count in the
phase that queued them (which costs a little overlap: profile runs only). Disabled (the default),
``phase`` does nothing. The table goes to the run's log and the seconds to metrics.json
("profile").
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

TRAIN_LOOP, TRAIN_STEPS = "training loop", "training steps"
DATA = "data loading and loop bookkeeping"


class PhaseTimes:
    """Seconds and calls per named phase; ``enabled`` False makes :meth:`phase` free."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled, self.device = bool(enabled), device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` measured by the caller (the training loop, which ends synchronised)."""
        if self.enabled:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def summary(self) -> dict[str, float]:
        """Seconds per phase, the training loop split into the steps and the rest (``DATA``)."""
        seconds = dict(self.seconds)
        loop = seconds.pop(TRAIN_LOOP, None)
        if loop is not None:
            seconds[DATA] = max(loop - seconds.get(TRAIN_STEPS, 0.0), 0.0)
        return {name: round(value, 4) for name, value in seconds.items()}

    def table(self) -> str:
        """One line per phase: seconds, calls, share of the total (largest first)."""
        seconds = self.summary()
        total = sum(seconds.values()) or 1.0
        calls = {**self.calls, DATA: self.calls.get(TRAIN_LOOP, 0)}
        lines = [f"{'phase':<36} {'seconds':>9} {'calls':>6} {'share':>6}"]
        for name, value in sorted(seconds.items(), key=lambda item: -item[1]):
            lines.append(f"{name:<36} {value:9.3f} {calls.get(name, 0):6d} {100 * value / total:5.1f}%")
        return "\n".join(lines)
