"""Smoke tests of the benchmark scripts (tiny sizes) and of their shared helpers."""

import os
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import bench_gmconv, bench_training, common
from tests.helpers import ENV, ROOT

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the Markdown table in a script's output."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("module", [bench_training, bench_gmconv])
def test_scripts_refuse_cuda_without_a_gpu_in_one_line(module, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cuda"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    message = str(exit_info.value.code)
    assert "no CUDA GPU" in message and "--device cpu" in message and "\n" not in message


def test_training_benchmark_rejects_an_unknown_experiment(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench", "--exp", "cifar10,no-such-exp"])
    with pytest.raises(SystemExit, match="no experiment config no-such-exp"):
        bench_training.main()


def test_training_benchmark_rejects_an_unknown_variant(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench", "--exp", "plume-rotation", "--variants", "ours,e2cnn,e3cnn"])
    with pytest.raises(SystemExit, match="--variants: unknown e3cnn; choose from .*rsteer, rpp, lift, baselines"):
        bench_training.main()


def test_training_benchmark_builds_the_named_baselines_at_their_published_widths():
    args = bench_training.argparse.Namespace(variants="ours,rgroup,e2cnn", overrides=["model.channels=4"],
                                             batch=2, naive_batch=2, compile=False, reference=None)
    variants = bench_training.build_variants("plume-rotation", args, torch.device("cpu"), "float32")
    assert [v.label for v in variants] == ["ours", "rgroup", "e2cnn"]
    assert [sum(p.numel() for p in v.trainer.model.parameters()) for v in variants[1:]] == [535_720, 622_656]
    assert all(v.slow and v.batch_size == 2 for v in variants[1:])


def test_p4_dynamics_benchmark_times_every_part_of_both_paths(capsys):
    """benchmarks/bench_p4_dynamics.py: a row per rank with the four parts and the body's ratio."""
    from benchmarks import bench_p4_dynamics
    bench_p4_dynamics.main(["--batch", "1", "--rounds", "1", "model.channels=4"])
    rows = table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["0", "1"]
    assert all(len(row) == 7 and all(float(cell) > 0 for cell in row[2:6]) and row[6].endswith("x")
               for row in rows)


def test_alternate_runs_the_steps_in_turn_and_rates_each_round():
    calls = []
    steps = [(lambda: calls.append("a"), 2, 10), (lambda: calls.append("b"), 1, 4)]
    seconds = iter([0.5, 1.5, 2.0, 1.0, 1.0, 4.0])

    def stopwatch(fn):
        fn()
        return next(seconds)

    a, b = common.alternate(steps, rounds=2, stopwatch=stopwatch)
    assert calls == ["a", "a", "b", "a", "a", "b"]
    assert a.rates == [20 / 2.0, 20 / 2.0] and b.rates == [4 / 2.0, 4 / 4.0]
    assert b.median == 1.5 and b.spread == "1-2"
    assert common.rate_text(1036.04) == "1036.0" and common.rate_text(0.012345) == "0.0123"


def test_stopwatch_times_the_call():
    import time
    assert common.Stopwatch(torch.device("cpu"))(lambda: time.sleep(0.05)) >= 0.05


def test_markdown_table_and_ratio():
    assert common.markdown_table(("a", "b"), [(1, "x")]) == "| a | b |\n|---|---|\n| 1 | x |"
    assert common.ratio(6.0, 2.0) == "3.0x" and common.ratio(None, 2.0) == "-"
    assert common.ratio(1.0, 0.0) == "inf"


def test_copy_bandwidth_is_measured_on_cpu():
    assert common.copy_bandwidth_gbs(torch.device("cpu"), mebibytes=8, repeats=2) > 0.1


def test_gather_matmul_bytes_counts_every_operand_once_per_use():
    # B = C = O = K = N = 1: forward x+s, s+g, w+g+y (7 operands), backward y+g+w, w+y+g, g+s, x (9)
    assert bench_gmconv.gather_matmul_bytes(1, 1, 1, 1, 1, element=4) == 16 * 4
    # x and its gradient stay float32 at half precision: 2 of the 16 operands
    assert bench_gmconv.gather_matmul_bytes(1, 1, 1, 1, 1, element=2) == 2 * 4 + 14 * 2
    # the weight (3 of the 16) does not grow with the batch
    assert bench_gmconv.gather_matmul_bytes(3, 1, 1, 1, 1, element=4) == (13 * 3 + 3) * 4


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_naive_variant_computes_the_naive_formula(device):
    cfg, composed = (bench_training.compose_config("cifar10", torch.device(device), ["model.channels=4", *extra])
                     for extra in ([], ["model.fused=false"]))
    fast = bench_training.Variant("ours", cfg, 2, torch.device(device))
    naive = bench_training.Variant("naive", composed, 2, torch.device(device), naive=True)
    fast.trainer.model.eval()
    naive.trainer.model.eval()
    conv = next(m for m in naive.trainer.model.modules() if isinstance(m, bench_training.GMConv))
    x = torch.randn(2, conv.in_channels, conv.group.order, device=device)
    with torch.no_grad():
        expected = bench_training.GF.gm_conv_naive(x, conv.weight, conv.index, conv.bias)
        torch.testing.assert_close(conv(x), expected)
        torch.testing.assert_close(naive.trainer.model(naive.batch[0]), fast.trainer.model(naive.batch[0]),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_training_benchmark_runs_every_variant_contended(device):
    proc = run_script("bench_training.py", "--exp", "cifar10,plume-rotation", "--rounds", "2", "--steps", "1",
                      "--batch", "4", "--naive-batch", "2", "--contended", "--device", device,
                      "model.channels=8", "trainer.batch_size=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = table_rows(proc.stdout)
    precisions = ["float16", "bfloat16"] if device == "cuda" else ["float32"]
    expected = [(exp, variant, precision) for exp, variants in
                (("cifar10", ("ours", "composed", "cnn", "naive")), ("plume-rotation", ("ours", "composed", "cnn", "naive")))
                for precision in precisions for variant in variants]
    assert [(r[0], r[1], r[3]) for r in rows] == expected
    for row in rows:
        assert float(row[4]) > 0 and row[9].startswith("contended (train")
    assert [r[2] for r in rows if r[1] == "naive"] == ["2"] * (2 * len(precisions))
    assert proc.stdout.count("the competitor (train") == 2 * len(precisions)
    assert "ours / naive" in proc.stdout and "ours / composed" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_gmconv_benchmark_quick(device):
    proc = run_script("bench_gmconv.py", "--quick", "--cases", "D14xD14 shared", "--device", device)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    rows = table_rows(proc.stdout)
    precisions = ["float32", "float16", "bfloat16"] if device == "cuda" else ["float32"]
    assert [(r[1], r[2]) for r in rows] == [(impl, p) for p in precisions for impl in ("ours", "naive")]
    for row in rows:
        assert float(row[3]) > 0
        if row[1] == "ours":
            gbs, percent = row[9].split(" (")
            assert float(gbs) > 0 and 0 < float(percent.rstrip("%)")) < 1000


def test_competitor_is_started_with_the_same_settings():
    args = bench_training.argparse.Namespace(batch=8, device="cpu", overrides=["model.channels=8"])
    command = bench_training.Competitor("train", "cifar10", 2, args).command
    assert command[1] == os.path.abspath(bench_training.__file__)
    assert command[2:] == ["--compete", "train", "--exp", "cifar10", "--threads", "2", "--batch", "8",
                           "--device", "cpu", "model.channels=8"]


def test_wait_policy_option_re_executes_with_the_variable_set(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((argv, env)))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    argv = ["bench_training.py", "--omp-wait-policy", "passive", "--exp", "cifar10"]
    common.with_wait_policy(argv)
    assert calls[0][0] == [sys.executable, *argv] and calls[0][1]["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what the re-executed process sees
    common.with_wait_policy(argv)
    common.with_wait_policy(["bench_training.py", "--exp", "cifar10"])
    assert len(calls) == 1


def test_peak_rss_is_the_measured_process_own_not_its_parent():
    """A worker started from a parent that once held 300 MiB must report its own peak: getrusage's
    ru_maxrss would give the parent's (exec keeps the high-water mark of the replaced address space)."""
    ballast = bytearray(300 << 20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: the parent's RSS is real
    code = ("from benchmarks.bench_gmconv import peak_rss_bytes, reset_peak_rss, rss_bytes;"
            "assert reset_peak_rss(); print(peak_rss_bytes() - rss_bytes())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT)
    del ballast
    assert proc.returncode == 0, proc.stderr
    assert 0 <= int(proc.stdout) < 16 << 20  # just after the reset: no peak above the current RSS


def test_other_processes_load_counts_a_busy_child_not_this_process():
    burn = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 1.5: pass"
    with common.OtherProcessesLoad() as load:
        subprocess.run([sys.executable, "-c", burn], check=True)
    assert load.cpus is not None and load.cpus >= 0.6   # the child's ~1 CPU, while this one waited
    with common.OtherProcessesLoad() as own:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.5:
            pass
    assert own.cpus is not None and own.cpus < load.cpus  # this process's own CPU time is left out
