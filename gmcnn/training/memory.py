"""Host and device memory: keep freed host memory for reuse, check that a training step fits.

**Reuse** (:func:`retain_freed_memory`). glibc serves large allocations with mmap and gives them
back to the OS when they are freed, and trims the heap top above a threshold. A training step
allocates and frees the same activation-sized tensors every micro-batch, so each one is
page-faulted in (and zeroed by the kernel) again: in a profile of a CPU step of the cifar10 model
a fifth of the time was kernel time, mostly page faults. Raising both thresholds makes glibc keep
those blocks in the heap and hand them out again. The heap then stays at the step's peak size,
which it reaches anyway. Linux with glibc only; elsewhere nothing changes.

**The memory check** (:func:`check_step_memory`, before training; ``trainer.memory_check=false``
skips it). The memory one training step needs beyond what the model already holds is

    gradients (= parameters) + optimizer state (its per-element state tensors x parameters)
    + activations of one micro-batch of m samples + the batch's inputs and targets
    + workspace (WORKSPACE = 3.5 times the largest saved tensor, calibrated on CPU steps)

The activations are measured, not modelled: the forward pass and loss run on 2 and then 3
training samples in train mode, and a ``saved_tensors_hooks`` pack hook adds up the distinct
storages autograd keeps for the backward pass (parameters and buffers, already allocated, left
out); the two sizes give a fixed part a and a per-sample part b, so m samples save a + b m. The
probe uses the run's own forward (fast paths, autocast) and leaves no trace: the RNG states and
the buffers (batch-norm running statistics) are restored. What the device has
(:func:`available_memory`): on CUDA the free memory (``torch.cuda.mem_get_info``); on CPU the
least of /proc/meminfo's MemAvailable, the headroom under the process's cgroup memory limit (v1
or v2; page cache it could reclaim counted as free) and the headroom under ``ulimit -v``. A step
that needs more is refused with one line: the numbers, the micro-batch size that would fit, and
what to lower. An out-of-memory error during training (:func:`is_out_of_memory`) ends the run
with one line as well (engine.py); the last checkpoint stays.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import logging
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

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


class OutOfMemory(Exception):
    """A training step does not fit in (or ran out of) the device's memory; the message says what
    to lower."""


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: CUDA's OutOfMemoryError, Python's MemoryError,
    or the RuntimeError of torch's CPU allocator ("can't allocate memory")."""
    return (isinstance(error, (torch.OutOfMemoryError, MemoryError))
            or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error)))


def describe(error: BaseException) -> str:
    """An allocation failure in a few words: how much could not be allocated (torch's CPU
    allocator gives bytes), else the first sentence of its message."""
    found = re.search(r"allocate (\d+) bytes", str(error))
    if found:
        return f"could not allocate {gib(int(found.group(1)))}"
    return str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__


# --- what the device has -----------------------------------------------------------------------

def available_memory(device: torch.device, proc: Path = Path("/proc"),
                     cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """Bytes this process can still allocate on ``device`` and where the limit comes from; None
    if unknown (not Linux). ``proc`` and ``cgroup``: where /proc and the cgroup mount are."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    limits = [(_meminfo_available(proc), "MemAvailable"), (_cgroup_headroom(proc, cgroup), "cgroup limit"),
              (_address_space_headroom(proc), "ulimit -v")]
    known = [(size, source) for size, source in limits if size is not None]
    return min(known) if known else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _meminfo_available(proc: Path) -> int | None:
    for line in (_read(proc / "meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _cgroup_headroom(proc: Path, cgroup: Path) -> int | None:
    """The least of limit - (usage - inactive page cache) over the process's memory cgroup and its
    ancestors (v2: memory.max, memory.current; v1: memory.limit_in_bytes, memory.usage_in_bytes);
    None without a limit. A container sees its own cgroup as the mount's root."""
    headroom = None
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root, limit_file, usage_file, cache = cgroup, "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            root, limit_file, usage_file, cache = (cgroup / "memory", "memory.limit_in_bytes",
                                                   "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = root / path.lstrip("/")
        folder = folder if folder.is_dir() else root
        for level in [folder, *folder.parents]:
            limit, usage = _read(level / limit_file), _read(level / usage_file)
            if limit is not None and usage is not None and limit.strip() != "max" and int(limit) < 2**60:
                stats = dict(line.split() for line in (_read(level / "memory.stat") or "").splitlines())
                free = int(limit) - int(usage) + int(stats.get(cache, 0))
                headroom = free if headroom is None else min(headroom, free)
            if level == root:
                break
    return headroom


def _address_space_headroom(proc: Path) -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    for line in (_read(proc / "self" / "status") or "").splitlines():
        if line.startswith("VmSize:"):
            return soft - int(line.split()[1]) * 1024
    return None


# --- what a step needs -------------------------------------------------------------------------

# Scratch memory of a step, in units of the largest tensor saved per sample: forward temporaries
# that are not saved, and in the backward pass the gradients flowing through the layers. The
# ratio of the peak RSS growth of CPU steps to the rest of the estimate, minus it, was 3.2
# (quickstart with channels 120 and 2000), 3.0 (unfused), 2.3 (rank 1), 6.7 (cnn), 8.7 (p4, whose
# largest tensor is small): 3.5 puts those estimates within 25% of the measured peak but for the
# last two (small models: 30-40% under)
WORKSPACE = 3.5
# the micro-batch sizes the activations are measured at (2 and 3: batch norm over a batch of
# vectors needs two samples)
PROBE_SAMPLES = (2, 3)


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step needs beyond the model's parameters and buffers (already held)."""
    gradients: int
    optimizer_state: int
    activations_fixed: int        # saved for backward whatever the batch size (a)
    activations_per_sample: int   # ... per sample of a micro-batch (b)
    largest_per_sample: int       # the largest saved tensor per sample (workspace: WORKSPACE x it)
    batch: int                    # one batch's inputs and targets on the device
    micro_batch: int

    def activations(self, micro_batch: int) -> int:
        return self.activations_fixed + self.activations_per_sample * micro_batch

    def needed(self, micro_batch: int | None = None) -> int:
        m = self.micro_batch if micro_batch is None else micro_batch
        return (self.gradients + self.optimizer_state + self.batch + self.activations(m)
                + int(WORKSPACE * self.largest_per_sample * m))

    def fitting_micro_batch(self, available: int) -> int:
        """The largest micro-batch size that fits in ``available`` bytes (0: not even one sample)."""
        per_sample = self.activations_per_sample + WORKSPACE * self.largest_per_sample
        return max(0, int((available - self.needed(0)) // per_sample)) if per_sample else self.micro_batch


def saved_for_backward(forward: Callable[[], Tensor], model: nn.Module) -> tuple[int, int]:
    """Total and largest bytes of the distinct storages autograd saves while ``forward()`` runs
    (of a storage, the largest view saved: a slice of a batch counts as its samples), those of
    ``model``'s parameters and buffers left out."""
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:  # the views of one storage: the largest, once
            size = min(tensor.numel() * tensor.element_size(), storage.nbytes())
            saved[storage.data_ptr()] = max(size, saved.get(storage.data_ptr(), 0))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(saved.values()), max(saved.values(), default=0)


def optimizer_state_slots(optimizer: torch.optim.Optimizer) -> int:
    """How many parameter-sized state tensors ``optimizer`` keeps (Adam 2, SGD with momentum 1):
    counted on a copy of it that takes one step on a throwaway parameter."""
    probe = nn.Parameter(torch.zeros(1000))
    probe.grad = torch.ones(1000)
    accepted = inspect.signature(type(optimizer)).parameters
    copy = type(optimizer)([probe], **{k: v for k, v in optimizer.defaults.items() if k in accepted})
    copy.step()
    return sum(1 for value in copy.state[probe].values()
               if isinstance(value, Tensor) and value.numel() == probe.numel())


def measure_step_memory(model: nn.Module, optimizer: torch.optim.Optimizer,
                        loss_of: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor,
                        batch_size: int, micro_batch: int) -> StepMemory:
    """A step's memory (:class:`StepMemory`), the activations measured with ``loss_of(inputs,
    targets)`` on the first 2 and 3 of the given samples (on the model's device); the RNG states,
    the model's buffers and its train/eval mode are restored."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in parameters)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    model.train()
    saved = []
    try:
        with torch.random.fork_rng(devices=devices):
            for n in PROBE_SAMPLES:
                saved.append(saved_for_backward(lambda n=n: loss_of(inputs[:n], targets[:n]), model))
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemory(f"not even {PROBE_SAMPLES[-1]} training samples fit in the memory of {inputs.device} "
                          f"({describe(error)}): lower model.channels") from None
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        model.train(was_training)
    (small, _), (large, largest) = saved
    sample = inputs[0].numel() * inputs.element_size() + targets[0].numel() * targets.element_size()
    per_sample = max(0, (large - small) // (PROBE_SAMPLES[1] - PROBE_SAMPLES[0]))
    return StepMemory(gradients=weights, optimizer_state=weights * optimizer_state_slots(optimizer),
                      activations_fixed=max(0, small - per_sample * PROBE_SAMPLES[0]),
                      activations_per_sample=per_sample, largest_per_sample=largest // PROBE_SAMPLES[1],
                      batch=sample * batch_size, micro_batch=micro_batch)


def check_step_memory(step: StepMemory, available: tuple[int, str] | None, device: torch.device) -> None:
    """Log the step's memory against what ``device`` has; OutOfMemory (one line: the numbers, the
    micro-batch size that would fit, what to lower) if it does not fit."""
    needed = step.needed()
    if available is None:
        log.info("memory: a training step needs about %s (unknown what %s has)", gib(needed), device)
        return
    free, source = available
    log.info("memory: a training step needs about %s; %s has %s (%s)", gib(needed), device, gib(free), source)
    if needed <= free:
        return
    fits = step.fitting_micro_batch(free)
    advice = (f"trainer.micro_batch_size={fits} would fit; or lower model.channels" if fits
              else "not even one sample fits: lower model.channels")
    raise OutOfMemory(
        f"a training step needs about {gib(needed)} but {device} has {gib(free)} ({source}): "
        f"activations {gib(step.activations(step.micro_batch))} and scratch "
        f"{gib(WORKSPACE * step.largest_per_sample * step.micro_batch)} for a micro-batch of {step.micro_batch} "
        f"samples, gradients and optimizer state {gib(step.gradients + step.optimizer_state)}; {advice} "
        "(or skip this check with trainer.memory_check=false)")
