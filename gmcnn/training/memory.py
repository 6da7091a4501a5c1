"""Keep freed host memory for reuse (CPU training).

glibc serves large allocations with mmap and gives them back to the OS when they are freed, and
trims the heap top above a threshold. A training step allocates and frees the same
activation-sized tensors every micro-batch, so each one is page-faulted in (and zeroed by the
kernel) again: in a profile of a CPU step of the cifar10 model a fifth of the time was kernel
time, mostly page faults. Raising both thresholds makes glibc keep those blocks in the heap and
hand them out again. The heap then stays at the step's peak size, which it reaches anyway.
Linux with glibc only; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20                          # glibc's maximum on 64-bit
TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Serve allocations up to 32 MiB from the heap and trim it only above 1 GiB; True if set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        done = False
    log.debug("retain freed memory for reuse: %s", done)
    return done
