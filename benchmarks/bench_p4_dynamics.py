"""The parts of the p4 dynamics body of exp=plume-rotation-p4 (docs/design.md §5), forward and
backward of one frame, reference against fast path, side by side in one process.

Parts, on a random input of the experiment's shape (batch --batch, 20 channels, 64 x 64):

* lifting, reference      - the vector-field GMLifting's forward (the pullback, a gather of it
                            over the 3 x 3 box, a matmul to the C lifted channels);
* lifting folded to t_0   - ``ResidualStream._lifted_readout``: the readout A = [1^T; W_out]
                            folded into the lifting, one conv2d to 1 + F channels per rotation;
* blocks + projection, reference    - the composed residual blocks and the 1x1 projection on x_0;
* blocks + projection, stream kernel - :func:`gmcnn.fused.gm_residual_stream` from t_0.

The sum of each pair is the body's cost per frame on that path; the training step (6 frames of a
roll-out, the loss, AdamW) is bench_training.py's. The parts alternate, round after round
(:func:`benchmarks.common.alternate`); reported: the median milliseconds per call over rounds.

    python benchmarks/bench_p4_dynamics.py [--batch 16] [--rounds 3] [--ranks 0,1] [--threads T]
        [--device cpu|cuda] [override ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.bench_training import compose_config  # noqa: E402
from benchmarks.common import Stopwatch, alternate, device_or_exit, machine_line, markdown_table  # noqa: E402
from gmcnn import fused as kernels  # noqa: E402
from gmcnn.nn.blocks import stream_block  # noqa: E402
from gmcnn.training.engine import build_model  # noqa: E402
from gmcnn.training.memory import retain_freed_memory  # noqa: E402

EXP = "plume-rotation-p4"


def parts(rank: int, batch: int, device: torch.device, overrides: list[str]) -> dict[str, Callable[[], None]]:
    """The four parts of the module docstring, each a call running forward and backward."""
    torch.manual_seed(0)
    model = build_model(compose_config(EXP, device, [f"model.rank={rank}", *overrides])).to(device)
    model.fused = False                                     # the composed modules as reference
    stream = model.stream
    x = torch.randn(batch, stream.lift.in_channels, model.group.n ** 2, device=device, requires_grad=True)
    x0 = stream.lift(x).detach().requires_grad_()
    t0 = stream._lifted_readout(x).detach().requires_grad_()

    def kernel():
        blocks = [stream_block(b.layers[0].conv, b.layers[0].activation.weight) for b in stream.blocks]
        return kernels.gm_residual_stream(t0, None, None, blocks, stream.project.weight,
                                          stream.project.bias, readout_given=True)

    return {"lifting, reference": lambda: stream.lift(x).sum().backward(),
            "lifting folded to t_0": lambda: stream._lifted_readout(x).sum().backward(),
            "blocks + projection, reference": lambda: stream.project(stream.blocks(x0)).sum().backward(),
            "blocks + projection, stream kernel": lambda: kernel().sum().backward()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", default="0,1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.channels=60")
    args = parser.parse_args(argv)
    device = device_or_exit(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        retain_freed_memory()  # as the runner does for a CPU run
    print(machine_line(device))
    rows = []
    for rank in map(int, args.ranks.split(",")):
        named = parts(rank, args.batch, device, args.overrides)
        for fn in named.values():                           # warm-up
            fn()
        results = alternate([(fn, 1, 1) for fn in named.values()], args.rounds, Stopwatch(device))
        ms = [1e3 / result.median for result in results]
        rows.append([rank, args.batch, *(f"{v:.0f}" for v in ms),
                     f"{(ms[0] + ms[2]) / (ms[1] + ms[3]):.2f}x"])
    print(markdown_table(["rank", "batch", *named, "body: reference / fast path"], rows))


if __name__ == "__main__":
    main()
