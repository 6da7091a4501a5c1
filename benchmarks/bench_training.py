"""Training throughput of a GM model against the same model whose GMConv layers use the naive
formulation (gather every channel into (B, C, K, N), then einsum), side by side in one run, on
random tensors of the experiment's shapes.

* ``--model cifar10`` (default): the cifar10 GM-CNN (13,691 parameters), batch 256; one step =
  forward, cross-entropy, backward, AdamW update. Target on CPU: 50x the naive throughput.
* ``--model plume``: the plume GMDynamics network (C64 x C64, t = 1, 2 blocks of 120 channels,
  rank-1 relaxed), batch 16; one step = a 6-step autoregressive roll-out, mean per-step MSE,
  backward, AdamW update.

Reports samples per second over --steps timed steps after --warmup steps, for our model eager
and under torch.compile (the compilation is in the warm-up, not timed), and the naive model eager.

    python benchmarks/bench_training.py [--model cifar10|plume] [--steps N] [--batch B]
                                        [--device cpu|cuda]
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
from gmcnn.models import GMCNN, GMDynamics  # noqa: E402
from gmcnn.nn import GMConv  # noqa: E402
from gmcnn.training.objectives import rollout  # noqa: E402

PLUME_STEPS = 6  # training roll-out length (DESIGN 4.2)


def build_model(name: str, naive: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "cifar10":
        model = GMCNN(["C32", "C32"], 3, 10, t=3, blocks=2, channels=120, dropout=0.1)
    else:
        model = GMDynamics(["C64", "C64"], channels=120, blocks=2, t=1, rank=1)
    if naive:
        for layer in model.modules():
            if isinstance(layer, GMConv):
                layer.group_matrix_product = (
                    lambda x, w, b, layer=layer: GF.gm_conv_naive(x, w, layer.index, b))
    return model


def throughput(name: str, naive: bool, steps: int, warmup: int, batch: int,
               device: torch.device, compiled: bool = False) -> float:
    model = build_model(name, naive).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.004, weight_decay=0.0153)
    if compiled:
        model = torch.compile(model)
    if name == "cifar10":
        inputs = torch.randn(batch, 3, 32, 32, device=device)
        targets = torch.randint(0, 10, (batch,), device=device)
        objective = lambda: F.cross_entropy(model(inputs), targets)  # noqa: E731
    else:
        inputs = torch.randn(batch, 20, 64, 64, device=device)
        targets = torch.randn(batch, PLUME_STEPS, 2, 64, 64, device=device)
        objective = lambda: F.mse_loss(rollout(model, inputs, PLUME_STEPS, 2), targets)  # noqa: E731

    def step() -> None:
        loss = objective()
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
    parser.add_argument("--model", choices=("cifar10", "plume"), default="cifar10")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--naive-steps", type=int, default=1, help="the naive model is slow")
    parser.add_argument("--batch", type=int, default=None, help="256 (cifar10) or 16 (plume)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (256 if args.model == "cifar10" else 16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {args.model} "
          f"model, batch {batch}")
    ours = throughput(args.model, False, args.steps, args.warmup, batch, device)
    compiled = throughput(args.model, False, args.steps, args.warmup + 1, batch, device, True)
    naive = throughput(args.model, True, args.naive_steps, args.warmup, batch, device)
    print("\n| model | samples / s | / naive |\n|---|---|---|")
    for label, value in (("ours", ours), ("ours, torch.compile", compiled), ("naive GMConv", naive)):
        print(f"| {label} | {value:.2f} | {value / naive:.1f}x |")
    if args.model == "cifar10":
        print(f"\ntarget: 50x the naive throughput; ours {ours / naive:.1f}x, compiled "
              f"{compiled / naive:.1f}x")


if __name__ == "__main__":
    main()
