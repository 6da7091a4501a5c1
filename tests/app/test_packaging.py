"""Installing gmcnn puts no bare ``dataset`` module into an environment (it would shadow the PyPI
package ``dataset``): the wheel holds the ``gmcnn`` package only, the repository's ``dataset/``
folder is imported from the repository root, and gmcnn refuses, in one line, another package that
answers to the name ``dataset`` (gmcnn/training/data.py).

The slow test builds the wheel, installs it without dependencies into a folder and the PyPI
``dataset`` (with its dependencies) into another, and imports both in one interpreter of this
environment (torch comes from here), outside the repository; it skips when the package index
cannot be reached."""

import importlib.util
import json
import shutil
import subprocess
import sys
import types
import zipfile

import pytest

from gmcnn.training import ConfigError
from gmcnn.training.data import datasets
from tests.helpers import ROOT


def build_wheel(tmp_path):
    """The wheel of a copy of the sources (the build's own folders stay out of the repository)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("gmcnn", "dataset"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # with this environment's setuptools where it has one (a fresh venv of Python >= 3.12 has none:
    # then pip fetches it into an isolated build environment)
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                             "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return next((tmp_path / "wheel").glob("gmcnn-*.whl"))


def test_the_repository_dataset_is_found_and_impostors_are_refused(monkeypatch):
    assert datasets().PROJECT == "gmcnn"
    monkeypatch.setitem(sys.modules, "dataset", types.ModuleType("dataset"))
    with pytest.raises(ConfigError, match=r"^the module 'dataset' at None is another package of that name, not "
                                          r"the repository's dataset/ folder; run from the repository root"):
        datasets()
    monkeypatch.setitem(sys.modules, "dataset", None)  # not importable
    with pytest.raises(ConfigError, match=r"^the datasets are the repository's dataset/ folder, which is not "
                                          r"installed with gmcnn; run from the repository root"):
        datasets()


@pytest.mark.slow
def test_the_wheel_installs_next_to_the_pypi_dataset_package(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"gmcnn", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    assert "gmcnn/native.c" in names                      # the pooling kernels' source, built on first use
    top_level = [n for n in names if n.endswith("top_level.txt")]
    assert not top_level or zipfile.ZipFile(wheel).read(top_level[0]).split() == [b"gmcnn"]

    site, pypi = tmp_path / "site", tmp_path / "pypi"
    install = [sys.executable, "-m", "pip", "install", "-q", "--target"]
    assert subprocess.run([*install, str(site), "--no-deps", str(wheel)], capture_output=True).returncode == 0
    if subprocess.run([*install, str(pypi), "dataset"], capture_output=True, timeout=300).returncode:
        pytest.skip("the package index cannot be reached: PyPI's dataset not installed")
    check = ("import json, dataset, gmcnn\n"
             "from gmcnn.training import ConfigError\n"
             "from gmcnn.training.data import datasets\n"
             "try:\n    datasets()\nexcept ConfigError as error:\n    refusal = str(error)\n"
             "print(json.dumps([gmcnn.__file__, dataset.__file__, hasattr(dataset, 'connect'), refusal]))\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": f"{site}:{pypi}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    gmcnn_file, dataset_file, has_connect, refusal = json.loads(result.stdout)
    assert gmcnn_file.startswith(str(site)) and dataset_file.startswith(str(pypi)) and has_connect
    assert refusal.startswith(f"the module 'dataset' at {dataset_file} is another package of that name")
