"""Smoke-plume generation time (tools/plume_generate.py, phiflow numpy backend): seconds per simulation
step and per task, and the time a full variant would take, extrapolated from those.

Each variant is timed on one task for ``--steps`` steps (translation and rotation run on 64 x 64);
the scale variant simulates task i on a 64 (1 + 0.1 i) grid, so it is timed at several sizes
(``--scale-tasks``) and the per-step time of the other tasks is interpolated linearly in the number
of cells. A full task is 310 steps; a full variant is all its tasks (translation 35, rotation 36,
scale 38). "Extrapolated" numbers multiply the measured per-step times and assume ``--workers``
processes scale perfectly (one free core each); measure a real run to confirm. The estimates use CPU
time, which other load on the machine does not inflate; the wall time is printed beside it.

    python benchmarks/bench_plume.py [--steps 20] [--variants translation rotation scale]
                                     [--scale-tasks 0 10 20 30 37] [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from tools import plume_generate as gen  # noqa: E402


def seconds_per_step(variant: str, task, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of one task; the simulation runs on one core, so CPU time is
    the per-core cost even when other processes share the machine."""
    setup = gen.setup_for(variant, task)
    wall, cpu = time.perf_counter(), time.process_time()
    gen.simulate(setup, steps)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def hms(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps timed per task (default 20)")
    parser.add_argument("--variants", nargs="+", default=list(gen.VARIANTS), choices=gen.VARIANTS)
    parser.add_argument("--scale-tasks", nargs="+", type=int, default=[0, 10, 20, 30, 37],
                        help="scale tasks timed (grid sizes), the others interpolated")
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel estimate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    gen.phi_modules()
    gen.simulate(gen.setup_for("translation", (32, 5)), 2)  # imports and first traces, untimed

    import phi
    print(f"phiflow {phi.__version__}, numpy backend, float64, {os.cpu_count()} CPUs visible; "
          f"{args.steps} steps timed per task, a full task = {gen.FULL_STEPS} steps")
    print(f"{'variant':<12} {'task':<9} {'grid':>8} {'wall s/step':>11} {'CPU s/step':>10} "
          f"{'CPU s/task (310 steps)':>23}")
    totals = {}
    for variant in args.variants:
        tasks = gen.variant_tasks(variant)
        timed = args.scale_tasks if variant == "scale" else [tasks[0]]
        cells, per_step = [], []
        for task in timed:
            setup = gen.setup_for(variant, task)
            wall, cpu = seconds_per_step(variant, task, args.steps)
            cells.append(setup.resolution ** 2)
            per_step.append(cpu)
            grid = f"{setup.resolution}x{setup.resolution}"
            print(f"{variant:<12} {str(task):<9} {grid:>8} {wall:11.3f} {cpu:10.3f} {cpu * gen.FULL_STEPS:23.1f}")
        order = np.argsort(cells)
        all_cells = [gen.setup_for(variant, t).resolution ** 2 for t in tasks]
        estimate = np.interp(all_cells, np.array(cells)[order], np.array(per_step)[order]) * gen.FULL_STEPS
        totals[variant] = (len(tasks), float(estimate.sum()))
    print("\nExtrapolated full variants (from the CPU s/step above, not measured end to end):")
    for variant, (count, total) in totals.items():
        print(f"  {variant:<12} {count} tasks: {hms(total)} on 1 process, "
              f"~{hms(total / args.workers)} with --workers {args.workers} (ideal scaling)")


if __name__ == "__main__":
    main()
