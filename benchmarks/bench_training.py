"""Training throughput of an experiment's GM model against the same model whose GMConv layers use
the naive formulation (gather every channel into (B, C, K, N), then einsum) and no fused
kernels, side by side in one run, on random tensors of the experiment's shapes.

Every step is the runner's own training step (``Trainer.train_step`` of the composed experiment
config: forward, loss, backward, optimizer update, micro-batching as configured), so the figures
are what ``python runner.py exp=...`` gets per step without data loading.

* ``--exp cifar10`` (default): the cifar10 GM-CNN (13,691 parameters), batch 256.
  Target on CPU: 50x the naive throughput.
* ``--exp plume-rotation``: the plume GMDynamics network (C64 x C64, rank-1 relaxed), batch 16,
  one step = a 6-step autoregressive roll-out.

Rows: ours as configured; ours without micro-batching (the whole batch at once); optionally
ours under torch.compile (``--compile``; compilation happens in the warm-up); the naive model
with the same trainer settings. After --warmup untimed steps each, --rounds rounds each run
--steps steps of every fast variant and one naive step (alternating, so that a shared machine
whose speed drifts affects all alike); reported: samples per second at the median step.

    python benchmarks/bench_training.py [--exp cifar10|plume-rotation] [--rounds R] [--steps N]
                                        [--device cpu|cuda] [--compile] [override ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from gmcnn import functional as GF  # noqa: E402
from gmcnn.nn import GMConv  # noqa: E402
from gmcnn.training.engine import Trainer, build_model  # noqa: E402


def make_naive(model: torch.nn.Module) -> torch.nn.Module:
    """Every GMConv computes the naive gather-all-channels formula; no fused kernels."""
    for layer in model.modules():
        if isinstance(layer, GMConv):
            layer.group_matrix_product = (
                lambda x, w, b, layer=layer: GF.gm_conv_naive(x, w, layer.index, b))
    if hasattr(model, "fused"):
        model.fused = False
    return model


def random_batch(cfg, model: torch.nn.Module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs of the model's shape; class labels, or a training roll-out of frames."""
    inputs = model.example_input(batch)
    if cfg.task == "classification":
        return inputs, torch.randint(0, cfg.model.num_classes, (batch,))
    out_len = cfg.data.options.windows.train_out_len
    return inputs, torch.randn(batch, out_len, cfg.data.in_channels, *inputs.shape[2:])


class Variant:
    """One model and trainer, with the duration of each timed step."""

    def __init__(self, label: str, cfg, naive: bool, device: torch.device, warmup: int):
        torch.manual_seed(0)
        model = build_model(cfg)
        self.label, self.device = label, device
        self.trainer = Trainer(cfg, make_naive(model) if naive else model, device)
        self.trainer.model.train()
        self.batch = [t.to(device) for t in random_batch(cfg, model, cfg.trainer.batch_size)]
        self.seconds: list[float] = []
        for _ in range(warmup):  # compilation, allocator and cache warm-up, untimed
            self.step(timed=False)

    def step(self, timed: bool = True) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.trainer.train_step(*self.batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            self.seconds.append(time.perf_counter() - start)

    def throughput(self) -> float:
        """Samples per second at the median step."""
        return len(self.batch[1]) / statistics.median(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp", default="cifar10")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of --steps steps of each fast variant and one naive step")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, e.g. trainer.batch_size=128")
    args = parser.parse_args()
    device = torch.device(args.device)
    overrides = [f"exp={args.exp}", f"trainer.device={args.device}", "logger=none",
                 *args.overrides]
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base="1.3"):
        cfg, whole, compiled = (compose(config_name="config", overrides=[*overrides, *extra])
                                for extra in ([], ["trainer.micro_batch_size=null"],
                                              ["trainer.compile=true"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; "
          f"exp={args.exp}, batch {cfg.trainer.batch_size}, "
          f"trainer.micro_batch_size={cfg.trainer.micro_batch_size}")
    variants = [Variant("ours", cfg, False, device, args.warmup),
                Variant("ours, whole batch at once", whole, False, device, args.warmup)]
    if args.compile:
        variants.append(Variant("ours, torch.compile", compiled, False, device, args.warmup + 1))
    naive = Variant("naive GMConv", cfg, True, device, args.warmup)
    # rounds alternate between the variants, so that a machine whose speed drifts during the
    # run (shared CPUs) affects all of them alike
    for _ in range(args.rounds):
        for variant in variants:
            for _ in range(args.steps):
                variant.step()
        naive.step()
    rows = [(v.label, v.throughput()) for v in variants + [naive]]
    naive_rate = rows[-1][1]
    print("\n| model | samples / s | / naive |\n|---|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.1f} | {value / naive_rate:.1f}x |")
    if args.exp == "cifar10":
        print(f"\ntarget: 50x the naive throughput; ours {rows[0][1] / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
