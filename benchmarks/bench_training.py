"""Training throughput of the cifar10 GM-CNN (13,691 parameters): ours against the same model
whose GMConv layers use the naive formulation (gather every channel into (B, C, K, N), then
einsum), side by side in one run, on random CIFAR-shaped tensors.

One step = forward, cross-entropy, backward, AdamW update, with the cifar10 experiment's batch
size (256, override with --batch). Reports images per second over --steps timed steps after
--warmup steps. Target on CPU: at least 50x the naive model's throughput.

    python benchmarks/bench_training.py [--steps N] [--warmup N] [--batch B] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from gmcnn import functional as GF  # noqa: E402
from gmcnn.models import GMCNN  # noqa: E402
from gmcnn.nn import GMConv  # noqa: E402


def cifar10_model(naive: bool) -> GMCNN:
    torch.manual_seed(0)
    model = GMCNN(["C32", "C32"], 3, 10, t=3, blocks=2, channels=120, dropout=0.1)
    if naive:
        for layer in model.modules():
            if isinstance(layer, GMConv):
                layer.group_matrix_product = (
                    lambda x, w, b, layer=layer: GF.gm_conv_naive(x, w, layer.index, b))
    return model


def throughput(naive: bool, steps: int, warmup: int, batch: int, device: torch.device) -> float:
    model = cifar10_model(naive).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.0153)
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--naive-steps", type=int, default=1, help="the naive model is slow")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; cifar10 "
          f"GM-CNN, batch {args.batch}")
    ours = throughput(False, args.steps, args.warmup, args.batch, device)
    naive = throughput(True, args.naive_steps, args.warmup, args.batch, device)
    print("\n| model | images / s |\n|---|---|")
    print(f"| ours | {ours:.0f} |\n| naive GMConv | {naive:.1f} |")
    print(f"\nours / naive throughput: {ours / naive:.1f}x (target 50x)")


if __name__ == "__main__":
    main()
