"""Forward+backward time of a p4 lifting layer followed by a p4 group convolution, three ways.

Implementations, on the same parameters and inputs (images (B, 1, n, n) -> lifting to C channels
on p4(n) -> group convolution C -> C, t = 1, 36 taps):

* ours   - :class:`gmcnn.nn.GMLifting` and :class:`gmcnn.nn.GMConv` with the gather backend
           (pullback to the group, one permutation gather with a gather backward, one matmul);
* naive  - the same index, gathered into a (B, C, K, N) tensor by advanced indexing and
           contracted with einsum (:func:`gmcnn.functional.gm_conv_naive`; scatter-add backward);
* conv2d - :func:`gmcnn.nn.lifting.lifting_conv2d` and :func:`gmcnn.nn.lifting.group_conv2d`:
           one circular ``F.conv2d`` each, with the four rotated copies of the kernel (how the
           G-CNN and relaxed-group-convolution papers compute it).

The variants alternate inside one process, round after round, and the table reports the median
step; compare the ratios, not the absolute times, on a shared machine.

    python benchmarks/bench_p4.py [--batch B] [--channels C] [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from gmcnn import functional as GF  # noqa: E402
from gmcnn.nn import GMConv, GMLifting  # noqa: E402
from gmcnn.nn.lifting import group_conv2d, lifting_conv2d  # noqa: E402

TOLERANCE = 1e-4


def variants(lift: GMLifting, conv: GMConv) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def naive_lift(x: torch.Tensor) -> torch.Tensor:
        s = x.sum(1, keepdim=True) if lift.channel_mode == "shared" else x
        return GF.gm_conv_naive(lift.pullback(s), lift.weight, lift.index, lift.bias)

    return {
        "ours": lambda x: conv(lift(x)),
        "naive": lambda x: GF.gm_conv_naive(naive_lift(x), conv.weight, conv.index, conv.bias),
        "conv2d": lambda x: group_conv2d(lifting_conv2d(x, lift.weight, lift.group, lift.t, lift.bias),
                                         conv.weight, conv.group, conv.t, conv.bias),
    }


def measure(n: int, mode: str, batch: int, channels: int, rounds: int) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    group = f"p4({n})"
    lift = GMLifting(group, 1, channels, t=1, channel_mode=mode, backend="gather")
    conv = GMConv(group, channels, channels, t=1, channel_mode=mode, backend="gather")
    x = torch.randn(batch, 1, n * n, requires_grad=True)
    fns = variants(lift, conv)
    with torch.no_grad():
        reference = fns["ours"](x[:2])
        scale = reference.abs().max().item()
        for name, fn in fns.items():
            error = (fn(x[:2]) - reference).abs().max().item() / scale
            if error > TOLERANCE:
                raise SystemExit(f"{name} disagrees with ours on p4({n}) {mode}: {error:.1e}")
    grad = torch.randn_like(reference[:1]).expand(batch, -1, -1)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds + 1):                      # the first round warms up
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x).backward(grad)
            times[name].append(time.perf_counter() - start)
            x.grad = None
            lift.zero_grad(set_to_none=True)
            conv.zero_grad(set_to_none=True)
    return [(name, 1e3 * statistics.median(t[1:])) for name, t in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="28,64", help="grid sizes n, comma separated")
    parser.add_argument("--quick", action="store_true", help="batch 2, 4 channels, 8 x 8, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.channels, args.rounds, args.sizes = 2, 4, 1, "8"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; batch {args.batch}, "
          f"1 -> {args.channels} -> {args.channels} channels, t = 1; median of {args.rounds} "
          "alternating rounds after 1 warm-up\n")
    print("| grid | channel mode | implementation | fwd+bwd ms | / ours |\n|---|---|---|---|---|")
    for n in (int(v) for v in args.sizes.split(",")):
        for mode in ("shared", "full"):
            rows = measure(n, mode, args.batch, args.channels, args.rounds)
            ours = dict(rows)["ours"]
            for name, ms in rows:
                print(f"| p4({n}), {n} x {n} | {mode} | {name} | {ms:.1f} | {ms / ours:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
