"""Shared helpers for tests: composing the real configs, running the real runner (each command a
process of its own, forked from a server that has imported the runner's modules:
tests/forkserver.py), and checking a module's fast paths against its reference (gmcnn.nn.blocks)."""

import atexit
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from gmcnn.nn.blocks import FastPathModule, set_fast_path
from tests.forkserver import ForkServer

ROOT = Path(__file__).resolve().parents[1]
# small generated data, no wandb: a default-experiment run takes seconds
FAST = ["logger=none", "data.options.train_size=300", "data.options.valid_size=100",
        "data.options.test_size=300"]
ENV = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


SERVER = ForkServer(ROOT, ENV)  # started by the first runner command of this test process
atexit.register(SERVER.close)


def runner(*overrides, timeout=300, fresh=False):
    """``python runner.py *overrides`` in the repository root, output captured; ``fresh``: in a new
    interpreter (its imports too), not forked from the server."""
    if fresh:
        return subprocess.run([sys.executable, str(ROOT / "runner.py"), *overrides], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=timeout)
    return SERVER.start([str(ROOT / "runner.py"), *overrides], ENV, merge_stderr=False).run(timeout)


def metrics_of(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# FAST with a narrow model: runs whose numbers matter less than their lifecycle
TINY = [*FAST, "model.channels=8"]


def start_runner(*overrides):
    """``python runner.py *overrides`` as a background process (stdout and stderr together), used
    as a ``subprocess.Popen``: pid, poll, wait, send_signal, communicate, stdout."""
    return SERVER.start([str(ROOT / "runner.py"), *overrides], ENV, merge_stderr=True)


@contextlib.contextmanager
def recorded_fast_paths(module: torch.nn.Module):
    """Collects the ``fast_path`` decision of every block inside ``module`` (gmcnn.nn.blocks)
    made while the context is open, as a list of names (None: the reference path)."""
    taken: list = []
    blocks = [m for m in module.modules() if isinstance(m, FastPathModule)]
    for block in blocks:
        def recorder(x, decide=block.fast_path):
            taken.append(decide(x))
            return taken[-1]
        block.fast_path = recorder
    try:
        yield taken
    finally:
        for block in blocks:
            del block.fast_path


def assert_fast_path_matches_reference(module: torch.nn.Module, inputs, require_fast_path=True,
                                       rtol: float = 1e-8, atol: float = 1e-10, training: bool = False) -> set:
    """``module(*inputs)`` with every block's fast path allowed equals it with every block on its
    reference path (``fused`` False), in float64 and eval mode (``training``: train mode, for
    batch statistics; the module must then be deterministic, e.g. without dropout): the values and
    the gradients of every input and every parameter. Returns the names of the fast paths taken,
    and fails if none was (unless ``require_fast_path`` is False), since the comparison would then
    be vacuous."""
    module = module.double().train(training)
    inputs = [x.detach().double().requires_grad_(True) for x in inputs]
    params = [p for p in module.parameters() if p.requires_grad]
    runs = []
    for enabled in (True, False):
        set_fast_path(module, enabled)
        with recorded_fast_paths(module) as taken:
            out = module(*inputs)
        grad_out = torch.randn(out.shape, dtype=out.dtype,
                               generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(out, inputs + params, grad_out, allow_unused=True)
        runs.append((out, grads, {name for name in taken if name is not None}))
    set_fast_path(module, True)
    (fast, fast_grads, paths), (reference, reference_grads, reference_paths) = runs
    assert not reference_paths, f"fused=False still took {reference_paths}"
    if require_fast_path:
        assert paths, "no block took a fast path: the comparison would be vacuous"
    torch.testing.assert_close(fast, reference, rtol=rtol, atol=atol)
    names = [f"input {i}" for i in range(len(inputs))] + [
        name for name, p in module.named_parameters() if p.requires_grad]
    for name, got, want in zip(names, fast_grads, reference_grads):
        assert (got is None) == (want is None), f"gradient of {name}: {got} against {want}"
        if got is not None:
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    return paths
