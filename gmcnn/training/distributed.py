"""Data-parallel training with torch.distributed, started by ``torchrun``.

``torchrun --nproc_per_node=N runner.py ...`` starts N processes (NCCL on GPUs, gloo on CPU).
Each global batch (the configured batch size, drawn from the same seeded sampler everywhere) is
split across the processes; each process scales its loss by its share of the global batch and the
gradients are summed with one all-reduce, so every step applies exactly the single-process
gradient of the global batch (up to summation order). Loss and score sums are reduced the same
way. Only rank 0 logs, writes checkpoints and metrics.

Without torchrun (WORLD_SIZE unset or 1) every function here is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (if any); returns this process's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not is_main():
        logging.getLogger("gmcnn").setLevel(logging.WARNING)
    log.info("data-parallel training on %d processes (%s)", world_size(), dist.get_backend())
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a stop signal reached one process)."""
    if not dist.is_initialized():
        return flag
    return all_sum([float(flag)], device)[0] > 0


def sum_gradients(model: nn.Module) -> None:
    """All-reduce (sum) every parameter's gradient in one flat buffer."""
    if not dist.is_initialized():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


class ShardedBatches(Sampler[list[int]]):
    """This rank's share ``batch[rank::world]`` of every global batch. A final batch with fewer
    samples than processes is skipped (every rank must take part in every step)."""

    def __init__(self, batches: Sampler[list[int]]):
        self.batches, self.rank, self.world = batches, rank(), world_size()

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world:
                yield batch[self.rank::self.world]

    def __len__(self) -> int:
        return len(self.batches)
