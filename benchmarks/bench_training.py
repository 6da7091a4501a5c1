"""Training throughput of the experiments' models, four variants side by side in one process, on
random tensors of each experiment's shapes.

Every step is the runner's own training step (``Trainer.train_step`` of the composed experiment
config: forward, loss, backward, AdamW update, micro-batching as configured), so the figures are
what ``python runner.py exp=...`` gets per step without data loading. Variants:

* ours      - the model as configured (GM-CNN: fused kernels where they apply);
* composed  - ``model.fused=false``: every block takes its reference path (the composed modules);
              the same model as ``ours`` where the model has no fused kernels (GMDynamics);
* naive     - the composed model whose GM convolutions use the original code's naive gather
              formulation (every channel gathered into a (B, C, K, N) tensor, then einsum);
* cnn       - the project's CNN baseline of the experiment (``model=cnn``, ``model=cnn_dynamics``
              for the plume experiments); it downsamples, the GM-CNN does not: a reference, not a
              target;
* baselines - with --variants naming them (or ``baselines`` for all), the dynamics baselines at
              their published widths (docs/design.md §3.3): convnet, e2cnn, rgroup,
              rgroup_translation, rsteer, rpp, lift; on CPU timed on the small batch like the CNN,
              e.g. ``--exp plume-rotation --variants ours,baselines``;
* gcnn      - p4 classifiers (exp=rot-mnist-generated-p4 and others on ``symmetry.group=p4``): the
              hand-written conv2d p4 G-CNN of benchmarks/gcnn_p4.py, the peer a researcher would
              use instead, with the same architecture, parameter count and ``model.boundary``
              (target: ours >= 1.2x it);
* --reference EXP adds the model of another experiment (its ``ours``, the same overrides, the
              same batch), e.g. the p4 model against the paper's D14 x D14 one:
              ``--exp rot-mnist-generated-p4 --reference rot-mnist-generated`` (target: ours at
              least a third of the reference's rate).

Batch: --batch (default 128) for classification, the configured one (16 roll-outs of 6 frames)
for dynamics. The naive model (and the dynamics CNN) are slow, so on CPU they take a smaller timed
batch (--naive-batch: 16 images, 4 roll-outs) and one step per round; every rate is per sample,
so the ratios compare cost per image. After --warmup untimed steps each, --rounds rounds each run
--steps steps of every other variant, alternating (a shared machine's drift affects all alike);
reported: the median over rounds of samples / s, the min-max over rounds, the ratios to naive and
to composed, the model's parameter count, CPU / wall (process CPU seconds over wall seconds of
the variant's steps), and how many CPUs other processes kept busy meanwhile (a niced job too:
"alone" holds where that is ~0).

--contended starts a competing process before the timed rounds of each experiment and stops it
after them: ``train`` (default) loops the same training step (ours, same batch) with the same
thread count; ``matmul`` loops 512 x 512 float32 matmuls. --threads / --competitor-threads set
torch.set_num_threads of each; --omp-wait-policy sets OMP_WAIT_POLICY for both (libgomp's
default spin-waiting is what makes the fused step slow on an oversubscribed CPU); --profile
prints per-op profiles of one step of ours and composed. On CUDA every variant runs under
autocast for each of --amp-dtypes (default float16 and bfloat16; float32 = AMP off).

    python benchmarks/bench_training.py [--exp cifar10,rot-mnist,...] [--rounds R] [--steps N]
        [--contended [train|matmul]] [--threads T] [--omp-wait-policy passive|active]
        [--device cpu|cuda] [--amp-dtypes float16,bfloat16] [--profile] [override ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import gcnn_p4  # noqa: E402
from benchmarks.common import (  # noqa: E402
    OtherProcessesLoad,
    Stopwatch,
    alternate,
    device_or_exit,
    load_average,
    machine_line,
    markdown_table,
    rate_text,
    ratio,
    with_wait_policy,
)
from gmcnn import functional as GF  # noqa: E402
from gmcnn.nn import GMConv  # noqa: E402
from gmcnn.training.build import count_parameters  # noqa: E402
from gmcnn.training.engine import Trainer, build_model  # noqa: E402
from gmcnn.training.memory import retain_freed_memory  # noqa: E402

EXPERIMENTS = ("cifar10", "rot-mnist", "mnist-bg-rot", "plume-rotation")
BASELINES = {"classification": "cnn", "dynamics": "cnn_dynamics"}
# per-image speed-up over naive that ours must reach (printed beside the table)
NAIVE_TARGETS = {"classification": 50.0, "dynamics": 20.0}
READY = "ready"


def compose_config(exp: str, device: torch.device, extra: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            f"exp={exp}", f"trainer.device={device.type}", "logger=none", *extra])


def make_naive(model: torch.nn.Module) -> torch.nn.Module:
    """Every GMConv computes the naive gather-all-channels formula."""
    for layer in model.modules():
        if isinstance(layer, GMConv):
            layer.group_matrix_product = (
                lambda x, w, b, layer=layer: GF.gm_conv_naive(x, w, layer.index, b))
    return model


def random_batch(cfg: DictConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random inputs of the experiment's shape; class labels, or a roll-out's target frames."""
    side = tuple(cfg.data.image_size)
    if cfg.task == "classification":
        return (torch.randn(batch, cfg.data.in_channels, *side, device=device),
                torch.randint(0, cfg.data.num_classes, (batch,), device=device))
    frames = cfg.model.get("input_frames", cfg.data.options.windows.input_frames)
    out_len = cfg.data.options.windows.train_out_len
    return (torch.randn(batch, frames * cfg.data.in_channels, *side, device=device),
            torch.randn(batch, out_len, cfg.data.in_channels, *side, device=device))


class Variant:
    """One model, its trainer and a fixed random batch; ``step()`` is one training step."""

    def __init__(self, label: str, cfg: DictConfig, batch: int, device: torch.device,
                 naive: bool = False, slow: bool = False, model: torch.nn.Module | None = None):
        torch.manual_seed(0)
        model = build_model(cfg) if model is None else model
        self.label, self.cfg, self.batch_size, self.slow = label, cfg, batch, slow
        self.trainer = Trainer(cfg, make_naive(model) if naive else model, device)
        self.trainer.model.train()
        self.batch = random_batch(cfg, batch, device)
        self.cpu_seconds = self.wall_seconds = 0.0

    def step(self) -> None:
        """One training step; its wall and process CPU seconds (all threads) accumulate."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.trainer.train_step(*self.batch)
        self.cpu_seconds += time.process_time() - cpu
        self.wall_seconds += time.perf_counter() - wall


VARIANTS = ("ours", "composed", "gcnn", "cnn", "naive")
DYNAMICS_BASELINES = ("convnet", "e2cnn", "rgroup", "rgroup_translation", "rsteer", "rpp", "lift")
GCNN_TARGET = 1.2  # ours / the hand-written G-CNN, training step and inference


def has_gcnn_peer(cfg: DictConfig) -> bool:
    """Whether the experiment's model is a p4 GM-CNN that benchmarks/gcnn_p4.py mirrors."""
    model = cfg.model
    return (cfg.task == "classification" and model._target_ == "gmcnn.models.GMCNN"
            and str(model.group).startswith("p4") and not str(model.group).startswith("p4m")
            and model.get("readout") == "max_mean" and model.get("pool") is True
            and model.get("norm") == "batch" and model.get("activation") == "relu"
            and model.get("channel_mode") == "full" and not model.get("rank"))


def build_variants(exp: str, args: argparse.Namespace, device: torch.device,
                   precision: str) -> list[Variant]:
    """The --variants that apply (composed only where the model has fused kernels), and ours
    under torch.compile with --compile. Slow variants (naive; the dynamics CNN, a 4-block
    128-channel full convolution network) are timed on the small batch, once per round."""
    amp = (["trainer.amp=false"] if precision == "float32"
           else ["trainer.amp=true", f"trainer.amp_dtype={precision}"])
    base = [*amp, *args.overrides]
    cfg = compose_config(exp, device, base)
    batch = args.batch if cfg.task == "classification" else cfg.trainer.batch_size
    small = min(batch, args.naive_batch or (batch if device.type == "cuda"
                                            else {"classification": 16, "dynamics": 4}[cfg.task]))
    has_fused = "fused" in cfg.model
    composed = compose_config(exp, device, [*base, "model.fused=false"]) if has_fused else cfg
    gm_only = [o for o in base if not o.lstrip("+~").startswith("model.")]  # the GM model's keys
    cnn = compose_config(exp, device, [*gm_only, f"model={BASELINES[cfg.task]}"])
    wanted = args.variants.split(",")
    variants = []
    if "ours" in wanted:
        variants.append(Variant("ours", cfg, batch, device))
    if "composed" in wanted and has_fused:
        variants.append(Variant("composed", composed, batch, device))
    if "gcnn" in wanted and has_gcnn_peer(cfg):
        torch.manual_seed(0)
        peer = gcnn_p4.from_config(cfg.model, cfg.data.in_channels, cfg.data.num_classes)
        variants.append(Variant(f"hand-written G-CNN ({peer.boundary})", cfg, batch, device, model=peer))
    if "cnn" in wanted:
        variants.append(Variant("cnn", cnn, small if cfg.task == "dynamics" else batch, device,
                                slow=cfg.task == "dynamics"))
    if args.compile:
        variants.append(Variant("ours, torch.compile",
                                compose_config(exp, device, [*base, "trainer.compile=true"]),
                                batch, device))
    if "naive" in wanted:
        variants.append(Variant("naive", composed, small, device, naive=True, slow=True))
    if cfg.task == "dynamics":
        for name in (DYNAMICS_BASELINES if "baselines" in wanted else
                     [n for n in wanted if n in DYNAMICS_BASELINES]):
            variants.append(Variant(name, compose_config(exp, device, [*gm_only, f"model={name}"]),
                                    small, device, slow=True))
    if args.reference:
        variants.append(Variant(f"{args.reference} (reference)",
                                compose_config(args.reference, device, base), batch, device))
    return variants


class Competitor:
    """A competing process: started (and warmed up) on entry, stopped on exit; its own
    throughput (steps / s while it ran) is in ``rate`` afterwards."""

    def __init__(self, kind: str, exp: str, threads: int, args: argparse.Namespace):
        self.command = [sys.executable, os.path.abspath(__file__), "--compete", kind, "--exp", exp,
                        "--threads", str(threads), "--batch", str(args.batch),
                        "--device", args.device, *args.overrides]  # OMP_WAIT_POLICY: inherited
        self.rate: float | None = None

    def __enter__(self) -> Competitor:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != READY:
            self.process.wait()
            sys.exit(f"the competing process {' '.join(self.command)} failed to start "
                     f"(exit status {self.process.returncode})")
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=120)
        lines = out.strip().splitlines()
        self.rate = json.loads(lines[-1])["steps_per_s"] if lines else None


def compete(kind: str, exp: str, args: argparse.Namespace, device: torch.device) -> None:
    """The competitor's loop: one training step of ours (``train``) or one 512 x 512 matmul
    (``matmul``) after another until SIGTERM (or until the parent is gone)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    if kind == "train":
        cfg = compose_config(exp, device, args.overrides)
        batch = args.batch if cfg.task == "classification" else cfg.trainer.batch_size
        step = Variant("competitor", cfg, batch, device).step
    else:
        a, b = torch.randn(512, 512, device=device), torch.randn(512, 512, device=device)
        step = lambda: torch.mm(a, b)  # noqa: E731
    step()
    print(READY, flush=True)
    parent, steps, start = os.getppid(), 0, time.perf_counter()
    while not stop and os.getppid() == parent:
        step()
        steps += 1
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start)}), flush=True)


def profile(variants: list[Variant], rows: int = 12) -> None:
    """Per-op CPU time of one training step of ours and composed (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for variant in variants:
        if variant.label in ("ours", "composed"):
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                variant.step()
            calls = sum(event.count for event in prof.key_averages())
            print(f"\nprofile of one step of {variant.label} ({calls} op calls):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def benchmark(exp: str, args: argparse.Namespace, device: torch.device, precision: str,
              condition: str) -> tuple[list[list[str]], list[str]]:
    """Table rows and target lines of one experiment at one precision."""
    variants = build_variants(exp, args, device, precision)
    for variant in variants:
        for _ in range(args.warmup):
            variant.step()
        variant.cpu_seconds = variant.wall_seconds = 0.0
    steps = [(v.step, 1 if v.slow else args.steps, v.batch_size) for v in variants]
    competing = contextlib.nullcontext()
    if args.contended:
        threads = args.competitor_threads or torch.get_num_threads()
        competing = Competitor(args.contended, exp, threads, args)
    with competing as competitor:
        with OtherProcessesLoad() as others:
            results = alternate(steps, args.rounds, Stopwatch(device))
        if args.profile:
            profile(variants)
    if args.contended:
        print(f"{exp}: the competitor ({args.contended}, {threads} threads) ran "
              f"{competitor.rate:.2f} steps / s", flush=True)
    rates = {v.label: r.median for v, r in zip(variants, results)}
    naive, composed = rates.get("naive"), rates.get("composed", rates.get("ours"))
    rows = [[exp, v.label, v.batch_size, precision, rate_text(r.median), r.spread,
             ratio(r.median, naive), ratio(r.median, composed),
             f"{v.cpu_seconds / v.wall_seconds:.2f}", condition,
             f"{count_parameters(v.trainer.model):,}"] for v, r in zip(variants, results)]
    ours, task, targets = rates.get("ours"), variants[0].cfg.task, []
    if others.cpus is not None:
        targets.append(f"{exp} ({precision}, {condition}): other processes kept {others.cpus:.2f} "
                       f"CPUs busy during the timed rounds")
    if ours and naive:
        target = NAIVE_TARGETS[task]
        targets.append(f"{exp} ({precision}, {condition}): ours / naive = {ours / naive:.1f}x, "
                       f"target >= {target:.0f}x: {'met' if ours >= target * naive else 'MISSED'}")
    if ours and "composed" in rates:
        targets.append(f"{exp} ({precision}, {condition}): ours / composed = {ours / composed:.2f}x, "
                       f"target >= 1: {'met' if ours >= composed else 'MISSED'}")
    if ours and "cnn" in rates:
        targets.append(f"{exp} ({precision}, {condition}): cnn baseline {rate_text(rates['cnn'])} samples / s "
                       f"= {rates['cnn'] / ours:.2f}x ours (a reference, not a target)")
    peer = next((label for label in rates if label.startswith("hand-written G-CNN")), None)
    if ours and peer:
        targets.append(f"{exp} ({precision}, {condition}): ours / {peer} = {ours / rates[peer]:.2f}x, "
                       f"target >= {GCNN_TARGET}: {'met' if ours >= GCNN_TARGET * rates[peer] else 'MISSED'}")
    reference = rates.get(f"{args.reference} (reference)")
    if ours and reference:
        targets.append(f"{exp} ({precision}, {condition}): ours / {args.reference} = "
                       f"{ours / reference:.2f}x, target >= 0.33: "
                       f"{'met' if 3 * ours >= reference else 'MISSED'}")
    return rows, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", default=",".join(EXPERIMENTS),
                        help="comma-separated experiments (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2,
                        help="timed steps of each variant per round (naive: 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of %(default)s, and for the dynamics experiments "
                             f"the baselines {','.join(DYNAMICS_BASELINES)} (all: baselines)")
    parser.add_argument("--batch", type=int, default=128, help="classification batch")
    parser.add_argument("--naive-batch", type=int, default=None,
                        help="timed batch of naive (default on CPU: 16 images, 4 roll-outs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp-dtypes", default=None,
                        help="comma-separated, on CUDA (default float16,bfloat16; float32 = no AMP)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--contended", nargs="?", const="train", choices=("train", "matmul"),
                        help="time against a competing process (default: the same training step)")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active"),
                        help="OMP_WAIT_POLICY of this process and the competitor (default: OpenMP's)")
    parser.add_argument("--competitor-threads", type=int, default=None,
                        help="threads of the competitor (default: --threads)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("--reference", default=None,
                        help="add a row for this experiment's model, e.g. rot-mnist-generated")
    parser.add_argument("--profile", action="store_true",
                        help="print per-op profiles of one step of ours and composed")
    parser.add_argument("--compete", choices=("train", "matmul"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, e.g. trainer.micro_batch_size=32 (model.* ones apply to the "
                             "GM variants only)")
    with_wait_policy(sys.argv)
    args = parser.parse_args()
    device = device_or_exit(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        retain_freed_memory()  # as the runner does for a CPU run
    if args.compete:
        compete(args.compete, args.exp, args, device)
        return
    unknown = [exp for exp in args.exp.split(",") + ([args.reference] if args.reference else [])
               if not os.path.isfile(os.path.join(ROOT, "configs", "exp", f"{exp}.yaml"))]
    if unknown:
        sys.exit(f"--exp: no experiment config {', '.join(unknown)} in configs/exp/")
    bad = sorted(set(args.variants.split(",")) - {*VARIANTS, *DYNAMICS_BASELINES, "baselines"})
    if bad:
        sys.exit(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}, "
                 f"{', '.join(DYNAMICS_BASELINES)}, baselines")
    precisions = (args.amp_dtypes or ("float16,bfloat16" if device.type == "cuda" else "float32")).split(",")
    condition = (f"contended ({args.contended}, {args.competitor_threads or torch.get_num_threads()} threads)"
                 if args.contended else "alone")
    print(machine_line(device), flush=True)
    started = time.perf_counter()
    rows, targets = [], []
    for exp in args.exp.split(","):
        for precision in precisions:
            exp_rows, exp_targets = benchmark(exp, args, device, precision, condition)
            rows += exp_rows
            targets += exp_targets
            print(f"{exp} {precision} done, {time.perf_counter() - started:.0f} s, "
                  f"load average {load_average()}", flush=True)
    print(f"\nrates per sample at the batch in each row; median over {args.rounds} rounds of "
          f"{args.steps} steps (naive, dynamics cnn on the small batch: 1 step); CPU / wall: process CPU "
          f"seconds over wall seconds of the variant's steps; load average at the end "
          f"{load_average()}\n")
    print(markdown_table(("config", "variant", "batch", "precision", "samples / s",
                          "spread (min-max)", "/ naive", "/ composed", "CPU / wall", "condition",
                          "parameters"),
                         rows))
    print("\nTargets: >= 50x naive on every classification config, >= 20x for the relaxed dynamics "
          "model, ours never slower than composed.\n" + "\n".join(targets))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
