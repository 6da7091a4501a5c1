"""The smoke-plume generator (tools/plume_generate.py) on tiny runs: a few steps of one or two tasks.

The simulation tests skip when phiflow is not installed (pip install -e '.[plume]') and are marked slow
(each simulates for 4 to 11 s on 2 cores); the argument and error checks run without phiflow.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dataset import DatasetError, plume
from tests import fakes
from tools import plume_generate as gen

ROOT = Path(__file__).resolve().parents[2]

STEPS = 6  # translation fixture: T = 6


@pytest.fixture(scope="module")
def phi():
    return pytest.importorskip("phi")


@pytest.fixture(scope="module")
def translation(phi, tmp_path_factory):
    """The first translation task, (8, 5), STEPS steps, through the public entry point."""
    out = tmp_path_factory.mktemp("plume-translation")
    result = gen.generate("translation", out, limit=1, steps=STEPS, progress=False)
    return out, result


def region_mean(frames: torch.Tensor, channel: int, x: tuple[int, int], y: tuple[int, int]) -> float:
    """Mean of v_x (channel 0) or v_y (1) over columns x[0]:x[1], rows y[0]:y[1] of every frame."""
    return frames[:, channel, y[0]:y[1], x[0]:x[1]].mean().item()


@pytest.mark.slow
def test_translation_files(translation):
    out, result = translation
    assert result == {"generated": [(8, 5)], "skipped": []}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "raw_data_8_5.pt"]  # no temporaries left
    data = torch.load(out / "raw_data_8_5.pt", weights_only=True)
    assert data.dtype == torch.float32 and data.shape == (STEPS, 2, 64, 64)
    assert torch.isfinite(data).all() and data.abs().max() > 0.1
    # the plume rises: upward velocity in the column above the inflow at x = 8, y = 5
    assert region_mean(data, 1, (3, 13), (5, 25)) > 0.05
    # incompressible flow in a closed box: the domain mean of each component vanishes
    assert data.mean(dim=(2, 3)).abs().max() < 1e-3
    loaded = plume.load_tasks(out, [(8, 5)], min_frames=STEPS, dataset="plume-translation")
    assert torch.equal(loaded[(8, 5)], data)


@pytest.mark.slow
def test_manifest_records_every_file_and_a_rerun_only_adds_it(translation):
    out, _ = translation
    path, manifest_path = out / "raw_data_8_5.pt", out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["files"]["raw_data_8_5.pt"]
    assert manifest["format"] == 1 and manifest["dataset"] == "plume-translation"
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size and entry["shape"] == [STEPS, 2, 64, 64]
    assert entry["task"] == [8, 5] and entry["dtype"] == "float32"
    assert entry["generator"]["version"] == gen.GENERATOR_VERSION and entry["generator"]["steps"] == STEPS
    assert entry["generator"]["inflow"] == [8.0, 5.0] and entry["generator"]["buoyancy_right"] == [0.0, 0.2]
    # files made before manifests existed: a rerun hashes them into a new manifest, simulating nothing
    manifest_path.unlink()
    stamp = path.stat().st_mtime_ns
    assert gen.generate("translation", out, tasks=["8,5"], steps=STEPS, progress=False)["generated"] == []
    assert path.stat().st_mtime_ns == stamp and json.loads(manifest_path.read_text()) == manifest
    with pytest.raises(DatasetError, match="holds plume-translation task files.*another folder"):
        gen.generate("rotation", out, tasks=["1,0"], steps=STEPS, progress=False)


@pytest.mark.slow
def test_deterministic(translation):
    out, _ = translation
    again = gen.simulate(gen.setup_for("translation", (8, 5)), STEPS)
    assert torch.equal(torch.from_numpy(again), torch.load(out / "raw_data_8_5.pt", weights_only=True))


@pytest.mark.slow
def test_resume_skips_finished_and_cleans_temporaries(translation):
    out, _ = translation
    path = out / "raw_data_8_5.pt"
    stamp = path.stat().st_mtime_ns
    stale = out / f".raw_data_8_5.pt.{2**22 + 12345}.tmp"  # from a (dead) process of a killed run
    stale.write_bytes(b"partial")
    result = gen.generate("translation", out, tasks=["8,5"], steps=STEPS, progress=False)
    assert result == {"generated": [], "skipped": [(8, 5)]}
    assert path.stat().st_mtime_ns == stamp and not stale.exists()
    assert gen.main(["--variant", "translation", "--out", str(out), "--tasks", "8_5", "--steps", str(STEPS),
                     "--no-progress", "--quiet"]) == 0
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_rotation_incomplete_files_are_regenerated(phi, tmp_path):
    (tmp_path / "raw_data_1_0.pt").write_bytes(b"truncated")
    torch.save(torch.zeros(9, 2, 64, 64), tmp_path / "raw_data_8_1.pt")  # a run of another length
    result = gen.generate("rotation", tmp_path, tasks=[(1, 0), "8,1"], steps=5, progress=False)
    assert result == {"generated": [(1, 0), (8, 1)], "skipped": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "raw_data_1_0.pt", "raw_data_8_1.pt"]
    frames = plume.load_tasks(tmp_path, [(8, 1)])[(8, 1)]
    assert frames.shape == (4, 2, 64, 64)  # T = steps - 1: the first frame is dropped
    # side 1: inflow at (59, 32) on the right wall, buoyancy k * (-0.01, 0): the flow goes to -x
    along, across = region_mean(frames, 0, (39, 59), (27, 37)), region_mean(frames, 1, (39, 59), (27, 37))
    assert along < -0.05 and abs(across) < 0.2 * abs(along)


@pytest.mark.slow
def test_scale_in_parallel_workers(phi, tmp_path):
    """Scale tasks 0 (64 x 64) and 1 (70 x 70, resized to 64 x 64 and divided by 1.1) in two processes."""
    result = gen.generate("scale", tmp_path, tasks=["0", "1"], steps=3, workers=2, progress=False)
    assert sorted(result["generated"]) == [0, 1] and result["skipped"] == []
    data = plume.load_tasks(tmp_path, [0, 1], min_frames=3)
    for task, frames in data.items():
        assert frames.shape == (3, 2, 64, 64) and torch.isfinite(frames).all()
        assert region_mean(frames, 1, (27, 37), (5, 20)) > 0.05, task  # rises above (32, 5) (scaled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "raw_data_0.pt", "raw_data_1.pt"]
    assert sorted(json.loads((tmp_path / "manifest.json").read_text())["files"]) == ["raw_data_0.pt", "raw_data_1.pt"]


@pytest.mark.slow
def test_small_writes_the_set_its_data_config_reads(phi, tmp_path, monkeypatch):
    """``--small`` (here with 3 steps instead of 50): the first training and the first held-out task,
    by default in data/plume-<variant>-small, the root of configs/data/plume-<variant>-small.yaml."""
    monkeypatch.chdir(tmp_path)
    assert gen.main(["--variant", "scale", "--small", "--steps", "3", "--no-progress", "--quiet"]) == 0
    config = yaml.safe_load((ROOT / "configs" / "data" / "plume-scale-small.yaml").read_text())
    assert config["root"] == "${paths.data_dir}/plume-scale-small"
    out = tmp_path / "data" / "plume-scale-small"
    expected = [plume.task_filename(t) for t in config["options"]["train_tasks"] + config["options"]["test_tasks"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *expected])
    assert expected == ["raw_data_0.pt", "raw_data_5.pt"]


def test_record_adds_files_made_elsewhere_to_the_manifest(tmp_path, caplog):
    """``--record``: task files from elsewhere (any length) are hashed as they are, nothing is simulated,
    and from then on the loader checks them; files that are not task files are refused."""
    tasks = plume.ROTATION_TRAIN[:2]
    fakes.write_tasks(tmp_path, tasks, frames=7, frame_shape=plume.PLUME_SHAPE)
    plume.load_tasks(tmp_path, tasks, dataset="plume-rotation")
    assert "--variant rotation --record --out" in caplog.text  # the no-manifest warning says how
    assert gen.main(["--variant", "rotation", "--record", "--out", str(tmp_path), "--quiet"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["raw_data_1_0.pt", "raw_data_2_1.pt"]
    entry = manifest["files"]["raw_data_2_1.pt"]
    assert entry["shape"] == [7, 2, 64, 64] and entry["generator"]["name"].startswith("unknown: recorded")
    assert entry["sha256"] == hashlib.sha256((tmp_path / "raw_data_2_1.pt").read_bytes()).hexdigest()
    assert gen.record_present("rotation", tmp_path) == tasks  # again: nothing changes
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    torch.save(torch.zeros(7, 2, 64, 64) + 1, tmp_path / "raw_data_2_1.pt")  # edited after recording
    with pytest.raises(DatasetError, match=r"raw_data_2_1\.pt does not match"):
        plume.load_tasks(tmp_path, tasks, dataset="plume-rotation")
    torch.save(torch.zeros(7, 3, 64, 64), tmp_path / "raw_data_3_2.pt")
    with pytest.raises(DatasetError, match=r"raw_data_3_2\.pt is not a task file"):
        gen.record_present("rotation", tmp_path)
    with pytest.raises(DatasetError, match="no plume-scale task files"):
        gen.record_present("scale", tmp_path / "empty")


def test_small_sets_fit_their_windows():
    for name, (train, test, _) in plume.SMALL_SETS.items():
        variant = name.removeprefix("plume-").removesuffix("-small")
        assert [*train, *test] == [gen.variant_tasks(variant, "train")[0], gen.variant_tasks(variant, "test")[0]]
        frames = gen.frames_for(variant, plume.SMALL_STEPS)
        assert plume.frames_needed(plume.SMALL_WINDOWS) <= frames  # 49: rotation exactly
        assert plume.frames_needed(plume.SMALL_WINDOWS, held_out=True) <= frames


def test_task_lists_and_setups():
    for variant, count in [("translation", 35), ("rotation", 36), ("scale", 38)]:
        train, test, _ = plume.TASK_SETS[f"plume-{variant}"]
        tasks = gen.variant_tasks(variant)
        assert tasks == list(train) + list(test) and len(set(tasks)) == count
        assert gen.variant_tasks(variant, "test") == list(test)
        for task in tasks:
            setup = gen.setup_for(variant, task)
            n = setup.resolution
            assert setup.radius <= setup.inflow[0] <= n - setup.radius and 0 < setup.inflow[1] < n
    assert gen.setup_for("translation", (16, 25)).inflow == (16.0, 25.0)  # (i, j) = (x, y)
    rotation = {side: gen.setup_for("rotation", (10, side)) for side in range(4)}
    assert [r.inflow for r in rotation.values()] == [(32, 5), (59, 32), (32, 59), (5, 32)]
    assert rotation[0].buoyancy == pytest.approx((0, 0.1)) and rotation[2].buoyancy == pytest.approx((0, -0.11))
    assert rotation[1].buoyancy == pytest.approx((-0.1, 0)) and rotation[3].buoyancy == pytest.approx((0.1, 0))
    assert rotation[0].dt == 1 and rotation[0].drop_first and gen.frames_for("rotation", 310) == 309
    scale = gen.setup_for("scale", 37)
    assert scale.resolution == 300 and scale.factor == pytest.approx(4.7) and scale.radius == pytest.approx(23.5)
    assert [gen.setup_for("scale", i).resolution for i in (0, 1, 3, 5, 10)] == [64, 70, 83, 96, 128]
    assert gen.parse_task("rotation", "(3, 2)") == (3, 2) and gen.parse_task("scale", "7") == 7


@pytest.mark.parametrize("variant,task", [
    ("translation", "8"), ("translation", "0,5"), ("translation", "8,64"), ("translation", "a,b"),
    ("rotation", "3,4"), ("rotation", "0,1"), ("rotation", "1,2,3"), ("scale", "41"), ("scale", "-1"),
    ("scale", "1,2"),
])
def test_bad_task_ids(variant, task, tmp_path):
    with pytest.raises(DatasetError, match=f"bad {variant} task id"):
        gen.generate(variant, tmp_path, tasks=[task], steps=3, progress=False)


def test_bad_arguments(tmp_path, caplog):
    with pytest.raises(DatasetError, match="unknown plume variant 'jetflow'"):
        gen.generate("jetflow", tmp_path)
    with pytest.raises(DatasetError, match="split"):
        gen.variant_tasks("scale", "valid")
    for kwargs, message in [({"steps": 1}, "steps"), ({"workers": 0}, "workers"), ({"limit": 0}, "limit")]:
        with pytest.raises(DatasetError, match=message):
            gen.generate("scale", tmp_path, **kwargs)
    assert gen.main(["--variant", "vortex", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "unknown plume variant 'vortex'" in caplog.text
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_command_line_runs_from_the_repository_root():
    """The command the README and the loaders' error message give: ``python -m tools.plume_generate``."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-m", "tools.plume_generate", "--variant", "vortex", "--out",
                             "unused", "--quiet"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown plume variant 'vortex'" in result.stderr


def test_missing_phiflow_says_how_to_install(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "phi" or m.startswith("phi.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "phi", None)  # import phi -> ImportError
    with pytest.raises(DatasetError, match=r"pip install -e '\.\[plume\]'"):
        gen.generate("rotation", tmp_path, limit=1, steps=3, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_large_grid_index_overflow_is_widened(phi):
    """phiml's numpy backend wrapped int32 linear indices on grids over 215 x 215 (scale i >= 24)."""
    gen.phi_modules()
    from phiml.backend._numpy_backend import NUMPY
    index = NUMPY.ravel_multi_index(np.array([[50_000, 50_000]], dtype=np.int32), (100_000, 100_000))
    assert int(np.asarray(index).reshape(-1)[0]) == 5_000_050_000
    small = NUMPY.ravel_multi_index(np.array([[2, 3]], dtype=np.int32), (10, 10))
    assert small.dtype == np.int32 and int(small[0]) == 23


@pytest.mark.skipif(os.environ.get("PLUME_LARGE") != "1", reason="set PLUME_LARGE=1: a 300 x 300 grid")
def test_largest_scale_task_runs(phi):
    frames = gen.simulate(gen.setup_for("scale", 37), 2)
    assert frames.shape == (2, 2, 64, 64) and np.isfinite(frames).all()
