"""Shared helpers for tests that compose the real configs or run the real runner."""

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
# small generated data, no wandb: a default-experiment run takes seconds
FAST = ["logger=none", "data.options.train_size=300", "data.options.valid_size=100",
        "data.options.test_size=300"]
ENV = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def compose_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def runner(*overrides, timeout=300, **kwargs):
    """``python runner.py *overrides`` in the repository root, output captured."""
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *overrides], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def metrics_of(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# FAST with a narrow model: runs whose numbers matter less than their lifecycle
TINY = [*FAST, "model.channels=8"]


def start_runner(*overrides):
    """``python runner.py *overrides`` as a background process (output captured)."""
    return subprocess.Popen([sys.executable, str(ROOT / "runner.py"), *overrides], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
