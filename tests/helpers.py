"""Shared helpers for tests: composing the real configs, running the real runner (in this process,
as ``python runner.py`` runs it: ``runner.run``; in a process of its own where a test needs one:
signals, a kill, launchers, the interpreter's start); the checks a module must pass (equivariance,
fast path against reference) are gmcnn.testing's, re-exported here."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

from hydra import compose, initialize_config_dir

import runner as runner_script
from gmcnn.testing import assert_equivariant, assert_fast_path_matches_reference, recorded_fast_paths  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
# small generated data, no wandb: a default-experiment run takes seconds
FAST = ["logger=none", "data.options.train_size=300", "data.options.valid_size=100",
        "data.options.test_size=300"]
QUIET = {"WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
ENV = {**os.environ, **QUIET}


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def runner(*overrides, fresh=False, timeout=300):
    """``python runner.py *overrides`` in the repository root, output captured: in this process
    (``runner.run``), or with ``fresh`` as a new process (the interpreter's start too; killed
    after ``timeout`` seconds)."""
    command = [sys.executable, str(ROOT / "runner.py"), *overrides]
    if fresh:
        return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    stdout, stderr = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, QUIET), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = runner_script.run(list(overrides), ROOT)
    return subprocess.CompletedProcess(command, status, stdout.getvalue(), stderr.getvalue())


def metrics_of(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# FAST with a narrow model: runs whose numbers matter less than their lifecycle
TINY = [*FAST, "model.channels=8"]


def start_runner(*overrides):
    """``python runner.py *overrides`` as a background process (``subprocess.Popen``; stdout and
    stderr together, text)."""
    return subprocess.Popen([sys.executable, str(ROOT / "runner.py"), *overrides], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
