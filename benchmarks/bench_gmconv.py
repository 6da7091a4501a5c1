"""Forward+backward time and peak extra memory of one GM convolution, three ways.

Implementations, all on the same layer parameters and inputs:

* ours   - :class:`gmcnn.nn.GMConv` (backend "auto": a permutation gather + one matmul in shared
           mode; the circular convolution in full mode on cyclic products);
* naive  - :func:`gmcnn.functional.gm_conv_naive`, which gathers every input channel into a
           (B, C, K, N) tensor and contracts it with einsum (the original code's formulation);
* conv2d - :func:`gmcnn.functional.circular_gm_conv` (channel sum, circular ``F.pad``,
           ``F.conv2d``), only for products of cyclic groups.

Cases are the paper's sizes: C32xC32 and D14xD14 with t=3, 120 -> 120 channels, batch 64, shared
channel mode, plus a full-mode row on C32xC32. One step is forward, backward with a fixed random
grad_output, and dropping the gradients. Each (case, implementation) runs in a fresh subprocess:

* peak extra MiB: peak RSS during one full step minus the RSS before it (after a single-sample
  step has loaded the kernels); glibc is set to mmap every block >= 64 KiB so that the RSS follows
  the live tensors. On CUDA: max_memory_allocated minus memory_allocated.
* fwd+bwd ms: median of the timed steps after that step, with glibc's mmap/trim thresholds at
  32/64 MiB (where its adaptive defaults settle); the last column is the peak extra RSS then,
  which includes what the malloc heap keeps around (fragmentation).

* GB/s, % of peak (ours, shared mode): the bytes the gather-matmul's operands move in one step
  (:func:`gather_matmul_bytes`) over the median step time, and that as a fraction of the peak
  memory bandwidth: --peak-bandwidth-gbs if given, else the bandwidth of a large device copy
  measured at the start (read + write bytes; an H200's nominal peak is 4800 GB/s, an H100 SXM's
  3350 GB/s).

On CUDA every row runs for each of --amp-dtypes (default float32, float16, bfloat16: the step under
``torch.autocast``); on CPU in float32.

Targets (CPU): ours at least 50x faster and needing 20x less peak memory than naive, and within
1.3x of F.conv2d on the cyclic case.

    python benchmarks/bench_gmconv.py [--repeats N] [--naive-repeats N] [--batch B]
                                      [--channels C] [--device cpu|cuda] [--amp-dtypes D,...]
                                      [--peak-bandwidth-gbs G] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from benchmarks.common import (  # noqa: E402
    Stopwatch,
    copy_bandwidth_gbs,
    device_or_exit,
    machine_line,
    markdown_table,
    ratio,
)
from gmcnn import functional as GF  # noqa: E402
from gmcnn.groups import make_group  # noqa: E402
from gmcnn.nn import GMConv  # noqa: E402

# (label, group, t, channel_mode)
CASES = [("C32xC32 shared", "C32xC32", 3, "shared"),
         ("D14xD14 shared", "D14xD14", 3, "shared"),
         ("C32xC32 full", "C32xC32", 3, "full")]
TOLERANCE = 1e-4


def build(spec: dict) -> tuple[GMConv, torch.Tensor]:
    """The layer (seeded, so every worker gets the same parameters) and an input batch."""
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    layer = GMConv(spec["group"], spec["channels"], spec["channels"], t=spec["t"],
                   channel_mode=spec["mode"]).to(device)
    x = torch.randn(spec["batch"], spec["channels"], layer.group.order, device=device)
    return layer, x


def implementation(name: str, layer: GMConv) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> y for one of "ours", "naive", "conv2d", using the layer's parameters."""
    if name == "ours":
        return layer
    if name == "naive":
        return lambda x: GF.gm_conv_naive(x, layer.weight, layer.index, layer.bias)
    axes = GF.cyclic_axes(layer.group)
    return lambda x: GF.circular_gm_conv(x, layer.weight, axes, layer.t, layer.bias)


def gather_matmul_bytes(batch: int, channels: int, out_channels: int, taps: int, positions: int,
                        element: int) -> int:
    """Bytes the shared-mode gather-matmul's operands move in one forward + backward step, each
    read or written once: x (B, C, N) and its gradient in float32; at the compute dtype's
    ``element`` size the channel sum s (B, N), the gathered taps g (B, K, N), the weight (O, K),
    the output y and its gradient (B, O, N).

    forward:  read x, write s; read s, write g; read W and g, write y
    backward: read gy and g, write dW; read W and gy, write dg; read dg, write ds; write dx
    """
    x, s, g, w, y = (4 * batch * channels * positions, element * batch * positions,
                     element * batch * taps * positions, element * out_channels * taps,
                     element * batch * out_channels * positions)
    forward = (x + s) + (s + g) + (w + g + y)
    backward = (y + g + w) + (w + y + g) + (g + s) + x
    return forward + backward


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark, VmHWM (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM of /proc/self/status. Not getrusage's ru_maxrss: that is also at least the peak of the
    address space exec replaced, which under subprocess's vfork is the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def set_malloc_thresholds(mmap: int, trim: int) -> None:
    """glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (no-op with another libc)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, mmap)
        libc.mallopt(-1, trim)
    except (OSError, AttributeError):
        pass


def worker(spec: dict) -> dict:
    """Measure one implementation on one case: peak extra bytes of one step ("extra"), then the
    median time of the timed steps ("ms") and, on CPU, the peak extra RSS while timing ("rss")."""
    cuda = spec["device"] == "cuda"
    if not cuda:
        # Every block >= 64 KiB is mmapped and unmapped on free, so the RSS follows the live
        # tensors (the CPU analogue of max_memory_allocated), not what glibc's heap keeps.
        set_malloc_thresholds(mmap=64 << 10, trim=128 << 10)
    layer, x = build(spec)
    x.requires_grad_(True)
    fn = implementation(spec["impl"], layer)
    grad_out = torch.randn(x.shape[0], layer.out_channels, x.shape[2], device=x.device)

    autocast = torch.autocast(spec["device"], dtype=getattr(torch, spec["precision"]),
                              enabled=spec["precision"] != "float32")

    def step(inputs: torch.Tensor = x, grad: torch.Tensor = grad_out) -> None:
        with autocast:
            out = fn(inputs)
        out.backward(grad.to(out.dtype))
        inputs.grad = None
        layer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    def start_peak() -> int:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        reset_peak_rss()  # if this fails, VmHWM is the lifetime peak (import included)
        return rss_bytes()

    def extra(baseline: int) -> int:
        peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
        return max(peak - baseline, 0)

    # One step on a single sample first, so that the libraries' code pages and lazily created
    # state (threads, kernel caches) are resident before the baseline and not counted as extra.
    step(x[:1].detach().requires_grad_(True), grad_out[:1])
    baseline = start_peak()
    step()  # the memory measurement, and the warm-up for the timing
    result = {"extra": extra(baseline), "rss": None}
    if not cuda:
        # Time with glibc's thresholds where its adaptive defaults end up in a warmed-up process.
        set_malloc_thresholds(mmap=32 << 20, trim=64 << 20)
    baseline = start_peak()
    stopwatch = Stopwatch(x.device)
    result["ms"] = 1e3 * statistics.median(stopwatch(step) for _ in range(spec["repeats"]))
    if not cuda:
        result["rss"] = extra(baseline)
    return result


def check_agreement(spec: dict, impls: list[str], batch: int = 2) -> float:
    """Largest difference of every implementation from ours on a batch slice, relative to the
    largest |output|."""
    layer, x = build(spec)
    # cuDNN convolutions use TF32 by default, which is not what is being checked here.
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        x = x[:batch]
        ref = layer(x)
        scale = ref.abs().max().item()
        return max((implementation(name, layer)(x) - ref).abs().max().item() / scale
                   for name in impls)


def run_worker(spec: dict) -> dict | None:
    """Run :func:`worker` in a fresh interpreter; None if it failed (e.g. killed for memory)."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  worker {spec['case']} / {spec['impl']} failed (rc {proc.returncode}): "
              f"{proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def bandwidth(spec: dict, ms: float, peak_gbs: float) -> str:
    """GB/s of the gather-matmul's operand bytes (:func:`gather_matmul_bytes`) and % of peak."""
    layer = GMConv(spec["group"], 1, 1, t=spec["t"])
    element = torch.empty((), dtype=getattr(torch, spec["precision"])).element_size()
    moved = gather_matmul_bytes(spec["batch"], spec["channels"], spec["channels"], layer.index.shape[0],
                                layer.group.order, element)
    gbs = moved / (ms / 1e3) / 1e9
    return f"{gbs:.1f} ({100 * gbs / peak_gbs:.1f}%)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-repeats", type=int, default=1,
                        help="timed steps of the (slow) naive version; default 1")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=120)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--amp-dtypes", default=None,
                        help="comma-separated; default float32,float16,bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--peak-bandwidth-gbs", type=float, default=None,
                        help="peak memory bandwidth, GB/s (default: a large device copy, measured)")
    parser.add_argument("--cases", default=",".join(case[0] for case in CASES),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--quick", action="store_true", help="batch 4, channels 8 (smoke check)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    device = device_or_exit(args.device)
    cases = [case for case in CASES if case[0] in args.cases.split(",")]
    if not cases:
        sys.exit(f"--cases: none of {args.cases!r} is one of {', '.join(case[0] for case in CASES)}")
    if args.quick:
        args.batch, args.channels = 4, 8
    precisions = (args.amp_dtypes or ("float32,float16,bfloat16" if device.type == "cuda"
                                      else "float32")).split(",")
    peak = args.peak_bandwidth_gbs or copy_bandwidth_gbs(device)
    started = time.perf_counter()
    print(f"{machine_line(device)}; batch {args.batch}, {args.channels} -> {args.channels} channels; "
          f"after 1 warm-up step, median of {args.repeats} steps ({args.naive_repeats} for naive); "
          f"peak bandwidth {peak:.0f} GB/s "
          f"({'given' if args.peak_bandwidth_gbs else 'measured: a device copy, read + write'})\n")
    rows, notes, agree = [], [], True
    for (label, group, t, mode), precision in itertools.product(cases, precisions):
        spec = {"case": label, "group": group, "t": t, "mode": mode, "batch": args.batch,
                "channels": args.channels, "device": args.device, "precision": precision}
        cyclic = GF.cyclic_axes(make_group(group)) is not None
        impls = ["ours", "naive"] + (["conv2d"] if cyclic else [])
        if precision == precisions[0]:
            error = check_agreement(spec, impls[1:])
            ok = error < TOLERANCE
            agree &= ok
            print(f"{label}: outputs {'agree' if ok else 'DISAGREE'} (max rel. diff {error:.1e})",
                  flush=True)
        results = {name: run_worker({**spec, "impl": name, "repeats": args.naive_repeats
                                     if name == "naive" else args.repeats}) for name in impls}
        naive = results["naive"] or {}
        for name in impls:
            r = results[name] or {}
            gather_matmul = name == "ours" and mode == "shared" and r
            rows.append((label, name, precision, f"{r['ms']:.1f}" if r else "failed",
                         f"{1e3 * args.batch / r['ms']:.0f}" if r else "-", mib(r.get("extra")),
                         ratio(naive.get("ms"), r.get("ms")),
                         ratio(naive.get("extra"), r.get("extra")), mib(r.get("rss")),
                         bandwidth(spec, r["ms"], peak) if gather_matmul else "-"))
        ours = results["ours"]
        targets = mode == "shared" and precision == "float32"  # the paper's layer, as published
        if ours and naive:
            notes.append(f"{label} {precision}: ours vs naive: {naive['ms'] / ours['ms']:.1f}x faster"
                         f"{' (target 50x)' * targets}, {ratio(naive['extra'], ours['extra'])} "
                         f"less peak memory{' (target 20x)' * targets}")
        if ours and results.get("conv2d"):
            backend = GMConv(group, 1, 1, t=t, channel_mode=mode).backend
            same = ", the same code as conv2d, so this shows the timing noise" * (backend == "conv")
            notes.append(f"{label} {precision}: ours / conv2d time = "
                         f"{ours['ms'] / results['conv2d']['ms']:.2f}"
                         f" ({'target <= 1.3; ' * targets}ours uses backend '{backend}'{same})")

    header = ("case", "implementation", "precision", "fwd+bwd ms", "samples / s", "peak extra MiB",
              "speed-up vs naive", "memory ratio naive/this", "peak extra RSS MiB while timed",
              "gather-matmul GB/s (% of peak)")
    print("\n" + markdown_table(header, rows))
    print("\nTargets (shared mode, the paper's layer, on CPU):\n" + "\n".join(notes))
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
