"""Shared helpers for tests: composing the real configs, running the real runner (each command a
process of its own, forked from a server that has imported the runner's modules:
tests/forkserver.py); the checks a module must pass (equivariance, fast path against reference)
are gmcnn.testing's, re-exported here."""

import atexit
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from gmcnn.testing import assert_equivariant, assert_fast_path_matches_reference, recorded_fast_paths  # noqa: F401
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
