"""The p4 classifier of exp=rot-mnist-generated-p4 against the hand-written conv2d p4 G-CNN a
researcher would use instead, per boundary: training step and inference, side by side in one process.

Variants, at equal parameters (45,566) and the same boundary (``--boundaries``, default both):

* ours      - the experiment's GM-CNN (its ImageGridStages fast path, gmcnn/nn/blocks.py);
* reference - the same model with ``fused=False`` (the composed modules: GM pooling by a permutation
              gather, the dense kernels indexed per call);
* gcnn      - benchmarks/gcnn_p4.py: plain PyTorch, rotated kernels, conv2d, BatchNorm3d, ReLU,
              max_pool2d.

Training: the runner's step (``Trainer.train_step``: forward, loss, backward, AdamW) on a random
batch of 28 x 28 images; inference: the eval-mode forward under ``torch.no_grad``. The variants
alternate, round after round (:func:`benchmarks.common.alternate`); reported: the median images / s
over rounds, the min-max over rounds, and ours / gcnn against the target of 1.2x (both phases). On
a shared machine compare the ratios, not the rates; ``--clock cpu`` (CPU only) times each call by
the process's CPU seconds instead of wall seconds, which other processes distort less (run it
with ``--threads 1``, where CPU time is the work done).

    python benchmarks/bench_p4_model.py [--batch 128] [--rounds 5] [--steps 2] [--threads T]
        [--boundaries zero,circular] [--device cpu|cuda] [--amp-dtype bfloat16|float16]
        [--clock wall|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import gcnn_p4  # noqa: E402
from benchmarks.bench_training import compose_config, random_batch  # noqa: E402
from benchmarks.common import (  # noqa: E402
    OtherProcessesLoad,
    Stopwatch,
    alternate,
    device_or_exit,
    load_average,
    machine_line,
    markdown_table,
    rate_text,
)
from gmcnn.training.engine import Trainer, build_model  # noqa: E402

EXP = "rot-mnist-generated-p4"
TARGET = 1.2  # ours / gcnn, training and inference


class CpuClock:
    """Process CPU seconds (all threads) taken by ``fn()``: the ``--clock cpu`` stopwatch."""

    def __call__(self, fn) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start


def variants(boundary: str, device: torch.device, amp: str | None) -> dict[str, Trainer]:
    """A trainer per variant, each on its own copy of the initial weights (seed 0)."""
    precision = ["trainer.amp=false"] if amp is None else ["trainer.amp=true", f"trainer.amp_dtype={amp}"]
    cfg = compose_config(EXP, device, [f"model.boundary={boundary}", *precision])
    models = {}
    for name in ("ours", "reference", "gcnn"):
        torch.manual_seed(0)
        if name == "gcnn":
            models[name] = gcnn_p4.from_config(cfg.model, cfg.data.in_channels, cfg.data.num_classes)
        else:
            models[name] = build_model(cfg)
            models[name].fused = name == "ours"
    return {name: Trainer(cfg, model, device) for name, model in models.items()}


def measure(boundary: str, args: argparse.Namespace, device: torch.device) -> tuple[list[list[str]], list[str]]:
    trainers = variants(boundary, device, args.amp_dtype)
    cfg = next(iter(trainers.values())).cfg
    inputs, targets = random_batch(cfg, args.batch, device)

    def train(trainer: Trainer):
        def step():
            trainer.model.train()
            trainer.train_step(inputs, targets)
        return step

    def infer(trainer: Trainer):
        def step():
            trainer.model.eval()
            with torch.no_grad(), torch.autocast(device.type, dtype=trainer.amp_dtype, enabled=trainer.amp):
                trainer.model(inputs)
        return step

    steps = [(phase(t), args.steps, args.batch) for phase in (train, infer) for t in trainers.values()]
    for step, _, _ in steps:
        step()                                                           # warm-up
    with OtherProcessesLoad() as others:
        results = alternate(steps, args.rounds, CpuClock() if args.clock == "cpu" else Stopwatch(device))
    names = [(phase, name) for phase in ("training", "inference") for name in trainers]
    rates = {key: r for key, r in zip(names, results)}
    rows = [[boundary, phase, name, rate_text(r.median), r.spread,
             f"{r.median / rates[(phase, 'gcnn')].median:.2f}x"] for (phase, name), r in rates.items()]
    lines = []
    if others.cpus is not None:
        lines.append(f"{boundary}: other processes kept {others.cpus:.2f} CPUs busy during the timed rounds")
    for phase in ("training", "inference"):
        ratio = rates[(phase, "ours")].median / rates[(phase, "gcnn")].median
        lines.append(f"{boundary} {phase}: ours / hand-written G-CNN = {ratio:.2f}x, target >= {TARGET}: "
                     f"{'met' if ratio >= TARGET else 'MISSED'}")
    return rows, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="calls of each variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--boundaries", default="zero,circular")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp-dtype", default=None, choices=("bfloat16", "float16"),
                        help="autocast dtype (default: float32, no autocast)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time calls by wall seconds or by this process's CPU seconds (CPU only)")
    parser.add_argument("--quick", action="store_true", help="batch 8, one round of one step (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.rounds, args.steps = 8, 1, 1
    device = device_or_exit(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        sys.exit("--clock cpu times CPU work; use --clock wall on CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(device), flush=True)
    started, rows, lines = time.perf_counter(), [], []
    for boundary in args.boundaries.split(","):
        if boundary not in ("zero", "circular"):
            sys.exit(f"--boundaries: 'zero' and/or 'circular', got {boundary!r}")
        boundary_rows, boundary_lines = measure(boundary, args, device)
        rows += boundary_rows
        lines += boundary_lines
    print(f"\n{EXP}, batch {args.batch}, {args.amp_dtype or 'float32'}: images / {args.clock} s, median over "
          f"{args.rounds} rounds of {args.steps} calls; load average at the end {load_average()}\n")
    print(markdown_table(("boundary", "phase", "variant", "images / s", "spread (min-max)", "/ gcnn"), rows))
    print("\n" + "\n".join(lines))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
