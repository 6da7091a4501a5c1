"""The memory check before training (gmcnn/training/memory.py): what the device has (from real
/proc and cgroup file formats), what a step needs (activations measured by the tensors autograd
saves, optimizer state), the one-line refusal, and an out-of-memory error during training."""

import json
import os
import resource
import subprocess
import sys

import pytest
import torch
from torch import nn

from gmcnn.training import checkpoint, memory, run
from gmcnn.training.engine import Trainer
from gmcnn.training.resume import Plan
from tests.helpers import ENV, FAST, ROOT, TINY, compose_config

GiB = 2**30


def fake_system(tmp_path, cgroup_line, files):
    """/proc and /sys/fs/cgroup under ``tmp_path``: MemAvailable 8 GiB, the process in the cgroup
    ``cgroup_line`` (a /proc/self/cgroup line), and the cgroup ``files`` {relative path: text}."""
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\nMemFree:         1048576 kB\n"
                                  "MemAvailable:    8388608 kB\nBuffers:          100 kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    (proc / "self" / "status").write_text("Name:\tpython\nVmPeak:\t 3388212 kB\nVmSize:\t 3322700 kB\n")
    for name, text in files.items():
        (cgroup / name).parent.mkdir(parents=True, exist_ok=True)
        (cgroup / name).write_text(text)
    return proc, cgroup


@pytest.mark.parametrize("cgroup_line,files,expected", [
    ("0::/", {}, (8 * GiB, "MemAvailable")),
    ("0::/", {"memory.max": "max\n", "memory.current": "1000\n"}, (8 * GiB, "MemAvailable")),
    # v2, the job's cgroup: 3 GiB limit, 2 GiB used of which 0.5 GiB reclaimable page cache
    ("0::/job", {"job/memory.max": f"{3 * GiB}\n", "job/memory.current": f"{2 * GiB}\n",
                 "job/memory.stat": f"anon 1000\ninactive_file {GiB // 2}\n"}, (GiB + GiB // 2, "cgroup limit")),
    # ... and a tighter parent
    ("0::/job/step", {"job/memory.max": f"{GiB}\n", "job/memory.current": f"{GiB // 4}\n",
                      "job/step/memory.max": f"{3 * GiB}\n", "job/step/memory.current": "0\n"},
     (3 * GiB // 4, "cgroup limit")),
    # v1 as a container sees it: its cgroup path is not under the mount, the mount's root is its own
    ("4:memory:/process_api/abc", {"memory/memory.limit_in_bytes": f"{2 * GiB}\n",
                                   "memory/memory.usage_in_bytes": f"{GiB}\n",
                                   "memory/memory.stat": "cache 5\ntotal_inactive_file 4096\n"},
     (GiB + 4096, "cgroup limit")),
    ("4:memory:/", {"memory/memory.limit_in_bytes": "9223372036854771712\n",
                    "memory/memory.usage_in_bytes": "7532158976\n"}, (8 * GiB, "MemAvailable")),
])
def test_available_memory_is_the_least_of_meminfo_and_the_cgroup_limits(tmp_path, cgroup_line, files, expected):
    proc, cgroup = fake_system(tmp_path, cgroup_line, files)
    assert memory.available_memory(torch.device("cpu"), proc, cgroup) == expected


def test_available_memory_counts_the_address_space_limit(tmp_path, monkeypatch):
    """``ulimit -v``: the limit less the process's VmSize (3322700 kB in the fake status)."""
    proc, cgroup = fake_system(tmp_path, "0::/", {})
    limit = 4 * GiB + 3322700 * 1024
    monkeypatch.setattr(memory.resource, "getrlimit", lambda which: (limit, limit))
    assert memory.available_memory(torch.device("cpu"), proc, cgroup) == (4 * GiB, "ulimit -v")


def mlp():
    return nn.Sequential(nn.Linear(10, 1000), nn.ReLU(), nn.Linear(1000, 3))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_the_saved_activations_are_the_distinct_tensors_autograd_keeps_less_the_weights(n):
    """Linear saves its input (the weight is a parameter), ReLU its output (also the second
    Linear's input: one storage), square its input: 4 bytes x n x (10 + 1000 + 3)."""
    model, x = mlp(), torch.randn(n, 10)
    assert memory.saved_for_backward(lambda: model(x).square().sum(), model) == (4 * n * 1013, 4 * n * 1000)


@pytest.mark.parametrize("optimizer,slots", [
    (lambda p: torch.optim.Adam(p, lr=0.1), 2), (lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.05), 2),
    (lambda p: torch.optim.Adam(p, lr=0.1, amsgrad=True), 3), (lambda p: torch.optim.SGD(p, lr=0.1), 0),
    (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 1)])
def test_optimizer_state_is_counted_in_parameter_sized_tensors(optimizer, slots):
    assert memory.optimizer_state_slots(optimizer(mlp().parameters())) == slots


def test_a_step_is_measured_on_two_samples_and_leaves_no_trace():
    """The MLP with batch norm and dropout: the per-sample and fixed parts against the saved
    tensors measured at 5 samples (the naive reference); the running statistics and the RNG are
    as before, the model is back in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 1000), nn.BatchNorm1d(1000), nn.ReLU(), nn.Dropout(0.5), nn.Linear(1000, 3))
    model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    inputs, targets = torch.randn(3, 10), torch.randint(0, 3, (3,))
    loss_of = lambda x, y: nn.functional.cross_entropy(model(x), y, reduction="sum")
    statistics, rng = [b.clone() for b in model.buffers()], torch.get_rng_state()
    step = memory.measure_step_memory(model, optimizer, loss_of, inputs, targets, batch_size=64, micro_batch=16)
    assert all(torch.equal(a, b) for a, b in zip(statistics, model.buffers())) and not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    weights = 4 * sum(p.numel() for p in model.parameters())
    assert (step.gradients, step.optimizer_state, step.batch, step.micro_batch) == (weights, 2 * weights, 64 * (40 + 8), 16)
    model.train()
    at_five, _ = memory.saved_for_backward(lambda: loss_of(inputs[:1].repeat(5, 1), targets[:1].repeat(5)), model)
    assert step.activations(5) == at_five
    assert step.largest_per_sample == 4000


def test_a_step_that_does_not_fit_is_refused_in_one_line_with_the_micro_batch_that_fits():
    step = memory.StepMemory(gradients=100 * 2**20, optimizer_state=200 * 2**20, activations_fixed=2**20,
                             activations_per_sample=50 * 2**20, largest_per_sample=20 * 2**20,
                             batch=2**20, micro_batch=64)
    assert step.needed() == (300 + 1 + 1 + 64 * 50 + int(3.5 * 20 * 64)) * 2**20
    fits = step.fitting_micro_batch(2 * GiB)
    assert step.needed(fits) <= 2 * GiB < step.needed(fits + 1) and fits == 14
    memory.check_step_memory(step, (step.needed(), "MemAvailable"), torch.device("cpu"))  # fits exactly
    with pytest.raises(memory.OutOfMemory) as error:
        memory.check_step_memory(step, (2 * GiB, "cgroup limit"), torch.device("cpu"))
    assert str(error.value) == (
        "a training step needs about 7.79 GiB but cpu has 2.00 GiB (cgroup limit): activations 3.13 GiB and "
        "scratch 4.38 GiB for a micro-batch of 64 samples, gradients and optimizer state 300.0 MiB; "
        "trainer.micro_batch_size=14 would fit; or lower model.channels (or skip this check with "
        "trainer.memory_check=false)")
    with pytest.raises(memory.OutOfMemory, match="not even one sample fits: lower model.channels"):
        memory.check_step_memory(step, (300 * 2**20, "ulimit -v"), torch.device("cpu"))


def test_allocation_failures_are_recognised():
    try:
        torch.empty(1 << 50)  # 4 PiB: torch's CPU allocator fails
    except RuntimeError as error:
        failure = error
    assert memory.is_out_of_memory(failure) and memory.describe(failure) == "could not allocate 4194304.00 GiB"
    assert memory.is_out_of_memory(MemoryError()) and not memory.is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.slow
def test_an_out_of_memory_error_in_training_is_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    """Epoch 2's first step fails as torch's CPU allocator does (a real 4 PiB allocation): the
    error names the epoch and the resume command with a smaller micro-batch; last.pt (epoch 1)
    stays."""
    cfg = compose_config(*TINY, "trainer.epochs=2", "trainer.micro_batch_size=32")
    real_step, calls = Trainer.train_step, []

    def step(self, inputs, targets):
        calls.append(len(targets))
        if len(calls) > -(-300 // cfg.trainer.batch_size):  # the first step of epoch 2
            torch.empty(1 << 50)
        return real_step(self, inputs, targets)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(memory.OutOfMemory) as error:
        run(Plan(cfg, tmp_path))
    last = tmp_path / "checkpoints" / "last.pt"
    assert str(error.value) == (
        f"out of memory in epoch 2 (could not allocate 4194304.00 GiB); the last checkpoint is {last}: resume "
        f"from it with a smaller micro-batch: python runner.py trainer.resume={tmp_path} trainer.micro_batch_size=16")
    assert checkpoint.load(last)["progress"]["epoch"] == 1


@pytest.mark.slow
def test_under_a_memory_cap_a_run_too_large_is_refused_before_training(tmp_path):
    """The issue's case (a wide model under a memory cap, here ``ulimit -v`` 8 GB) in a sweep of
    one job: one line, status failed in metrics.json, no traceback; the micro-batch size it names
    fits under the cap."""
    sweep = tmp_path / "sweep"
    cap = 8 * 10**9
    result = subprocess.run(
        [sys.executable, "runner.py", "-m", *FAST, "trainer.device=cpu", "model.channels=10000", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    error = json.loads((sweep / "0" / "metrics.json").read_text())
    assert error["status"] == "failed" and not (sweep / "0" / "checkpoints").exists()
    message = error["error"]
    assert message.startswith("a training step needs about ") and "(ulimit -v): activations" in message
    assert message.endswith("or lower model.channels (or skip this check with trainer.memory_check=false)")
    fits = int(message.split("trainer.micro_batch_size=")[1].split()[0])
    assert 1 <= fits < 64 and f"| failed: {message} |" in result.stderr
    assert os.path.getsize(sweep / "0" / "runner.log") > 0
