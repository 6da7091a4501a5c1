"""What the benchmark scripts share: the device check, timing, alternating rounds, the machine's
load, the memory bandwidth of a plain copy and Markdown tables.

Timing: :class:`Stopwatch` times a call with ``time.perf_counter`` on CPU and with CUDA events
(after a ``torch.cuda.synchronize``) on CUDA, so that queued kernels are counted.
Alternation: :func:`alternate` runs every variant's steps in turn, round after round, so that a
shared machine whose speed drifts affects all variants alike; ratios of variants measured in one
call are what the benchmarks report.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


def device_or_exit(name: str) -> torch.device:
    """``torch.device(name)``; exits with a one-line message if CUDA is asked for but missing."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {name}: no CUDA GPU is visible to torch {torch.__version__}; "
                 "run with --device cpu or on a machine with a GPU")
    return device


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has run since boot (user, nice, system, irq and
    softirq time of /proc/stat's first line); None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(value) for value in f.readline().split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class OtherProcessesLoad:
    """``with OtherProcessesLoad() as load:`` -- afterwards ``load.cpus`` is the average number of
    CPUs that other processes (any nice level; a competitor started by this one included) kept
    busy during the block: the machine's busy CPU time minus this process's, over the wall time.
    A niced job still takes CPU from a benchmark's threads (the scheduler lets it finish its
    slice), so "alone" is only alone where this is near 0. None where it cannot be measured."""

    def __enter__(self) -> OtherProcessesLoad:
        self.cpus: float | None = None
        self._start = (time.perf_counter(), time.process_time(), busy_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall, own, busy = time.perf_counter(), time.process_time(), busy_cpu_seconds()
        if busy is not None and self._start[2] is not None:
            others = (busy - self._start[2]) - (own - self._start[1])
            self.cpus = max(others, 0.0) / (wall - self._start[0])


THREADING_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def machine_line(device: torch.device) -> str:
    """torch version, threads, device (and GPU name), the OpenMP settings in the environment and
    the load averages, for a table's header."""
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    threading = ", ".join(f"{name}={os.environ[name]}" for name in THREADING_VARIABLES if name in os.environ)
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}{gpu}, "
            f"{os.cpu_count()} CPUs, {threading or 'OpenMP defaults'}, load average {load_average()}")


def with_wait_policy(argv: list[str]) -> None:
    """Honour ``--omp-wait-policy passive|active``: OpenMP reads OMP_WAIT_POLICY once, when torch
    loads it, so if the environment differs the script re-executes itself with it set (the
    competing process inherits it). Call before parsing the arguments."""
    if "--omp-wait-policy" not in argv[:-1]:
        return
    policy = argv[argv.index("--omp-wait-policy") + 1].upper()
    if os.environ.get("OMP_WAIT_POLICY") != policy:
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, "OMP_WAIT_POLICY": policy})


class Stopwatch:
    """Seconds taken by ``fn()``, including the GPU work it queued."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


@dataclass
class Rounds:
    """Per-round throughputs of one variant (units per second)."""
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> str:
        return f"{rate_text(min(self.rates))}-{rate_text(max(self.rates))}"


def rate_text(value: float) -> str:
    """One decimal, or three significant digits below 10 (slow variants: 0.0123)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def alternate(steps: Sequence[tuple[Callable[[], object], int, int]], rounds: int,
              stopwatch: Stopwatch) -> list[Rounds]:
    """For each (step, calls per round, units per call): ``rounds`` rounds, each calling every
    step its number of times in turn; returns units / second of each step in each round."""
    results = [Rounds() for _ in steps]
    for _ in range(rounds):
        for (step, calls, units), result in zip(steps, results):
            seconds = sum(stopwatch(step) for _ in range(calls))
            result.rates.append(calls * units / seconds)
    return results


def copy_bandwidth_gbs(device: torch.device, mebibytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth of a plain device copy, GB/s (10^9 bytes): bytes read plus bytes
    written by ``dst.copy_(src)``, at the fastest of ``repeats`` copies."""
    src = torch.empty(mebibytes << 18, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    stopwatch = Stopwatch(device)
    dst.copy_(src)
    seconds = min(stopwatch(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(num: float | None, den: float | None) -> str:
    """``num / den`` as "12.3x"; "-" when either is missing."""
    if num is None or den is None:
        return "-"
    return f"{num / den:.1f}x" if den > 0 else "inf"
