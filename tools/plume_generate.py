"""Regenerate the smoke-plume task files with PhiFlow 3 (docs/design.md §4.3; ``pip install -e '.[plume]'``).

    python -m tools.plume_generate --variant rotation [--out data/plume-rotation] [--workers N]
    python -m tools.plume_generate --variant rotation --small   # data/plume-rotation-small: 2 tasks, 50 steps
    python -m tools.plume_generate --variant rotation --record --out DIR   # hash files made elsewhere

Run from the repository root: a data-preparation tool beside the loaders, not part of the installed
package. Writes one file per task, ``raw_data_{i}_{j}.pt`` (translation, rotation) or ``raw_data_{i}.pt``
(scale), each a ``torch.save``-d float32 tensor (T, 2, 64, 64) laid out [t, (v_x, v_y), y, x], the
format :func:`dataset.plume.load_tasks` reads. By default every task of the variant (train and
held-out, the lists of :mod:`dataset.plume`); ``--split``, ``--tasks``, ``--limit`` and ``--steps``
narrow it; ``--small`` writes the 2-task set ``data=plume-<variant>-small`` reads (the first training
and the first held-out task, 50 steps: 100 steps at ~0.35 s, about 35 s on a free core; 2 min
measured on 2 cores shared with two other simulations). ``--out`` defaults to where
``configs/data/plume-<variant>[-small].yaml`` looks, ``data/plume-<variant>[-small]``.

Every finished file is recorded in ``<out>/manifest.json`` (:data:`dataset.plume.MANIFEST`: per file
its task, shape, dtype, size, sha256 and the generator's name, version, steps and simulation
parameters), which the loader checks files against. Finished tasks (a file that loads with the
expected shape, float32 and finite) are skipped and only hashed into the manifest if it lacks them
(an entry whose hash still matches is kept as it is), so a run over files made before manifests
existed only adds the manifest, and an interrupted run resumes. ``--record`` simulates nothing: it
adds the variant's task files present in ``--out`` as they are (made elsewhere, e.g. the original
upstream files, of any length; the generator entry says so), so that runs check them from then on.
Each file is written to a temporary name in the output folder and renamed, so a file is either
complete or absent. Tasks run in parallel processes (``--workers``). The simulation is
deterministic (no randomness; direct pressure solve in float64).

Physics (docs/design.md §4.3), one step of every task:

1. smoke density, a cell-centred grid with zero-gradient boundaries, is advected by the velocity
   with MacCormack and a step of 1, and the inflow is added: 1 per step in every cell whose centre
   lies inside the inflow sphere (a hard mask);
2. the buoyancy force, density times the buoyancy vector, is resampled to the staggered velocity
   grid;
3. the velocity (staggered, closed box: zero normal velocity at the walls) is advected by itself
   with semi-Lagrangian and the variant's ``dt``, and the force is added;
4. a pressure projection makes the velocity divergence free;
5. the frame is the velocity sampled at the cell centres (the mean of the two faces of each cell).

``dt`` of docs/design.md §4.3 is the step of the velocity self-advection; the smoke step is 1 and the
buoyancy is added once per step unscaled, as the original data were made (PhiFlow 2.0). The phiflow
3 API differs from that release, so the files are physically equivalent, not bit-identical, to the
original ones; the original also stored the velocity at the lower cell faces, this generator stores
it at cell centres as docs/design.md §4.3 asks.

Coordinates: the box is [0, 64] x [0, 64] with 64 cells of size 1 along each axis; a point is
written (x, y); x is the second (column) axis and y the first (row) axis of a frame; channel 0 is
v_x and channel 1 is v_y; "up" is +y, i.e. increasing row index (plot with ``origin="lower"``). An
inflow "(32, 5)" of docs/design.md §4.3 is at x = 32, y = 5: horizontally centred, 5 cells above the bottom
wall y = 0, and its buoyancy (0, b) points to +y.

- translation, task (i, j): inflow at x = i, y = j, radius 5; buoyancy (0, 0.1) in cells whose centre
  has x < 32 (left half), (0, 0.2) in the right half; dt 0.5; T = steps (310).
- rotation, task (k, side): inflow at (32, 5), (59, 32), (32, 59), (5, 32) for side 0..3 (bottom,
  right, top, left wall), radius 5; buoyancy k * (0, 0.01), k * (-0.01, 0), k * (0, -0.011),
  k * (0.01, 0), pointing away from the wall; dt 1; the first frame dropped, T = steps - 1 (309).
- scale, task i: factor f = 1 + 0.1 i; an n x n grid on the box [0, n]^2 with n = int(64 f) (computed
  exactly as 64 (10 + i) // 10); inflow at (32 f, 5 f), radius 5 f; buoyancy (0, 0.1 f); dt 0.5; every
  frame resized to 64 x 64 (bilinear, antialiased, cell centres to cell centres) and divided by f;
  T = steps (310).

Cost (phiflow 3.4 numpy backend, float64, one core per task; ``benchmarks/bench_plume.py``):
about 0.35 s per step on 64 x 64 (mostly phiflow's Python overhead), 0.5 s on 128 x 128 and 1.1 s on
300 x 300. Measured at full length on a 2-core machine shared with other jobs: two translation tasks
with ``--workers 2`` took 205 s in all (about 110 s CPU each), two rotation tasks 197 s, the
largest scale task (i = 37, 300 x 300) 342 s alone. Extrapolated from the per-step times, not run end
to end: a full variant takes about 70 min (translation, 35 tasks), 60 min (rotation, 36) and 2 h 10
min (scale, 38) on one core, about half that on a laptop with ``--workers 2`` and two free cores
(~35 min, ~30 min, ~65 min; 2 h 10 min for all three). ``--workers`` beyond the free cores does
not help.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from math import prod
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from dataset.plume import (
    MANIFEST,
    MANIFEST_FORMAT,
    PLUME_SHAPE,
    SMALL_SETS,
    SMALL_STEPS,
    TASK_SETS,
    Task,
    file_record,
    read_manifest,
    task_filename,
)
from dataset.registry import DatasetError
from gmcnn.io import atomic_write, atomic_write_text

log = logging.getLogger("tools.plume_generate")

VARIANTS = ("translation", "rotation", "scale")
FULL_STEPS = 310
GENERATOR_VERSION = 1  # raise when a change alters the files (recorded in the manifest)
BOX = 64
SMOKE_DT = 1.0
INSTALL_HINT = "pip install -e '.[plume]'  (or: pip install 'phiflow>=3')"
ROTATION_SIDES = {  # side -> (inflow centre (x, y), buoyancy per unit k (x, y))
    0: ((32.0, 5.0), (0.0, 0.01)),
    1: ((59.0, 32.0), (-0.01, 0.0)),
    2: ((32.0, 59.0), (0.0, -0.011)),
    3: ((5.0, 32.0), (0.01, 0.0)),
}
MAX_SCALE_TASK = 40  # f = 5, a 320 x 320 grid
_TMP = re.compile(r"^\.(?P<name>raw_data_[0-9_]+\.pt|manifest\.json)\.(?P<pid>[0-9]+)\.tmp$")  # see write_atomic


@dataclass(frozen=True)
class PlumeSetup:
    """The simulation of one task; positions (x, y) in cells of the simulation grid."""
    variant: str
    task: Task
    resolution: int                    # n: an n x n grid on the box [0, n]^2
    inflow: tuple[float, float]        # sphere centre (x, y)
    radius: float
    buoyancy: tuple[float, float]      # force per unit density (x, y); translation: left half
    buoyancy_right: tuple[float, float] | None  # translation only: the right half (x >= n / 2)
    dt: float                          # step of the velocity self-advection
    drop_first: bool                   # rotation: the first frame is dropped
    factor: float                      # scale: velocity divided by it after resizing to 64 x 64


def phi_modules():
    """The phiflow names the simulation uses; a DatasetError with the install line if missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # phiflow's import-time notices
            import phi  # noqa: F401
            from phi import flow
    except ImportError as error:
        raise DatasetError(f"the plume generator needs phiflow 3 ({error}): {INSTALL_HINT}") from None
    version = str(getattr(phi, "__version__", "0"))
    major = re.match(r"\d+", version)
    if major is None or int(major.group()) < 3:
        raise DatasetError(f"the plume generator needs phiflow >= 3, found {version}: {INSTALL_HINT}")
    _patch_index_overflow()
    return flow


def _patch_index_overflow() -> None:
    """phiml's numpy backend casts linear indices to int32 while assembling the pressure matrix, which
    wraps once (grid cells)^2 > 2^31, i.e. grids above 215 x 215 (scale tasks i >= 24); reported
    upstream as tum-pbs/PhiML issue 15. Widen to int64 where the product needs it; a no-op for phiml
    releases that already do."""
    try:
        from phiml.backend._numpy_backend import NUMPY, NumPyBackend
        original = NumPyBackend.ravel_multi_index
    except (ImportError, AttributeError):  # reorganised phiml: nothing to patch
        return
    if getattr(original, "_gmcnn_widened", False):
        return
    probe = original(NUMPY, np.array([[50_000, 50_000]], dtype=np.int32), (100_000, 100_000))
    if int(np.asarray(probe).reshape(-1)[0]) == 50_000 * 100_000 + 50_000:
        return  # fixed upstream

    def ravel_multi_index(self, multi_index, shape, mode="undefined"):
        multi_index = np.asarray(multi_index)
        if multi_index.dtype.kind == "i" and prod(int(s) for s in shape) > np.iinfo(multi_index.dtype).max:
            multi_index = multi_index.astype(np.int64)
        return original(self, multi_index, shape, mode)

    ravel_multi_index._gmcnn_widened = True
    NumPyBackend.ravel_multi_index = ravel_multi_index


# ----------------------------------------------------------------------------------------------
# Tasks


def variant_tasks(variant: str, split: str = "all") -> list[Task]:
    """The variant's tasks from :data:`dataset.plume.TASK_SETS`: train, then held-out ("all")."""
    check_variant(variant)
    train, test, _ = TASK_SETS[f"plume-{variant}"]
    chosen = {"all": list(train) + list(test), "train": list(train), "test": list(test)}.get(split)
    if chosen is None:
        raise DatasetError(f"split must be all, train or test, got {split!r}")
    return chosen


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise DatasetError(f"unknown plume variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def parse_task(variant: str, text: str | int | Sequence[int]) -> Task:
    """A task id from "i,j" / "i_j" / (i, j) (translation, rotation) or "i" / i (scale), checked by
    :func:`setup_for`."""
    check_variant(variant)
    if isinstance(text, str):
        parts = [p for p in re.split(r"[,_\s]+", text.strip().strip("()[]")) if p]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise DatasetError(f"bad {variant} task id {text!r}: expected integers") from None
    elif isinstance(text, int) and not isinstance(text, bool):
        values = [text]
    else:
        try:
            values = [int(v) for v in text]
        except (TypeError, ValueError):
            raise DatasetError(f"bad {variant} task id {text!r}") from None
    task: Task = values[0] if len(values) == 1 else tuple(values)
    setup_for(variant, task)
    return task


def setup_for(variant: str, task: Task) -> PlumeSetup:
    """The simulation parameters of a task (docs/design.md §4.3); DatasetError for a malformed or out-of-range
    task id."""
    check_variant(variant)
    if variant == "scale":
        if not isinstance(task, int) or isinstance(task, bool) or not 0 <= task <= MAX_SCALE_TASK:
            raise DatasetError(f"bad scale task id {task!r}: an integer i in 0..{MAX_SCALE_TASK} "
                               f"(factor 1 + 0.1 i)")
        factor = 1 + 0.1 * task
        n = BOX * (10 + task) // 10  # int(64 f) without float rounding
        return PlumeSetup(variant, task, n, (32 * factor, 5 * factor), 5 * factor, (0.0, 0.1 * factor), None,
                          0.5, False, factor)
    if not (isinstance(task, tuple) and len(task) == 2 and all(isinstance(v, int) for v in task)):
        raise DatasetError(f"bad {variant} task id {task!r}: a pair of integers (i, j)")
    i, j = task
    if variant == "translation":
        if not (0 < i < BOX and 0 < j < BOX):
            raise DatasetError(f"bad translation task id {task!r}: the inflow (x, y) = (i, j) must lie "
                               f"inside the box, 0 < i, j < {BOX}")
        return PlumeSetup(variant, task, BOX, (float(i), float(j)), 5.0, (0.0, 0.1), (0.0, 0.2), 0.5, False, 1.0)
    if j not in ROTATION_SIDES or i < 1:
        raise DatasetError(f"bad rotation task id {task!r}: (k, side) with k >= 1 and side in 0..3")
    centre, unit = ROTATION_SIDES[j]
    return PlumeSetup(variant, task, BOX, centre, 5.0, (i * unit[0], i * unit[1]), None, 1.0, True, 1.0)


def frames_for(variant: str, steps: int) -> int:
    """Frames T of a task file simulated for ``steps`` steps (rotation drops the first)."""
    check_variant(variant)
    return steps - 1 if variant == "rotation" else steps


# ----------------------------------------------------------------------------------------------
# Simulation


def simulate(setup: PlumeSetup, steps: int = FULL_STEPS) -> np.ndarray:
    """Run one task: (T, 2, 64, 64) float32, [t, (v_x, v_y), y, x] at cell centres."""
    if steps < 1 + setup.drop_first:
        raise DatasetError(f"steps must be at least {1 + setup.drop_first}, got {steps}")
    flow = phi_modules()
    math = flow.math
    n = setup.resolution
    with math.precision(64), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"spsolve requires A be CSC or CSR")  # scipy, every step
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"phi(ml)?(\.|$)")  # phiflow's own
        box = flow.Box(x=n, y=n)
        smoke = flow.CenteredGrid(0, flow.ZERO_GRADIENT, box, x=n, y=n)
        velocity = flow.StaggeredGrid(0, 0, box, x=n, y=n)  # 0: closed walls
        inflow = flow.resample(flow.Sphere(x=setup.inflow[0], y=setup.inflow[1], radius=setup.radius),
                               to=smoke, soft=False)
        if setup.buoyancy_right is None:
            buoyancy = math.vec(x=setup.buoyancy[0], y=setup.buoyancy[1])
        else:  # per-cell buoyancy: left half / right half by cell-centre x
            centres_x = np.arange(n) + 0.5
            left = np.broadcast_to((centres_x < n / 2)[None, :], (n, n))  # [y, x]
            bx = np.where(left, setup.buoyancy[0], setup.buoyancy_right[0])
            by = np.where(left, setup.buoyancy[1], setup.buoyancy_right[1])
            values = math.tensor(np.stack([bx, by], -1), flow.spatial("y,x"), flow.channel(vector="x,y"))
            buoyancy = flow.CenteredGrid(values, 0, box)
        pressure = None
        frames = []
        for step in range(steps):
            smoke = flow.advect.mac_cormack(smoke, velocity, SMOKE_DT) + inflow
            force = flow.resample(smoke * buoyancy, to=velocity)
            velocity = flow.advect.semi_lagrangian(velocity, velocity, setup.dt) + force
            # a sparse LU solve (deterministic). In the closed box the pressure is free up to a
            # constant; make_incompressible balances the divergence so the system is consistent, and
            # rank_deficiency=0 keeps phiml from bordering the matrix with a dense row and column of
            # ones, which makes the LU 3-5x slower (9 s a step on 300 x 300) for the same velocity
            solve = flow.Solve("scipy-direct", 1e-5, 0, x0=pressure, rank_deficiency=0)
            velocity, pressure = flow.fluid.make_incompressible(velocity, (), solve)
            if setup.drop_first and step == 0:
                continue
            centred = velocity.at_centers().values
            assert centred.vector.item_names == ("x", "y"), centred.shape
            frames.append(_to_64(centred.numpy("vector,y,x"), setup))
    return np.stack(frames).astype(np.float32)


def _to_64(frame: np.ndarray, setup: PlumeSetup) -> np.ndarray:
    """A (2, n, n) frame as (2, 64, 64) in units of the 64 x 64 grid (scale: resize, divide by f)."""
    if frame.shape[1:] == PLUME_SHAPE[1:] and setup.factor == 1.0:
        return frame
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(frame))[None],
                                              size=PLUME_SHAPE[1:], mode="bilinear", align_corners=False,
                                              antialias=True)[0]
    return (resized / setup.factor).numpy()


# ----------------------------------------------------------------------------------------------
# Files


def is_complete(path: Path, frames: int) -> bool:
    """True if ``path`` holds a finite float32 tensor (frames, 2, 64, 64)."""
    if not path.is_file():
        return False
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (truncated, corrupt, not a tensor file)
        return False
    return (isinstance(data, torch.Tensor) and data.dtype == torch.float32
            and tuple(data.shape) == (frames, *PLUME_SHAPE) and bool(torch.isfinite(data).all()))


def open_manifest(out: Path, variant: str) -> dict:
    """The manifest of ``out`` (a new, empty one if there is none); DatasetError if it belongs to
    another data set."""
    dataset = f"plume-{variant}"
    manifest = read_manifest(out)
    if manifest is None:
        return {"format": MANIFEST_FORMAT, "dataset": dataset, "files": {}}
    if manifest.get("dataset") != dataset:
        raise DatasetError(f"{out} holds {manifest.get('dataset')} task files ({out / MANIFEST}); "
                           f"write {dataset} to another folder (--out)")
    return manifest


def record_task(manifest: dict, out: Path, variant: str, task: Task, steps: int | None) -> bool:
    """Hash the finished file of ``task`` into ``manifest``, made by this generator with ``steps``
    steps, or (``steps`` None) found there, made elsewhere (checked to be a (T, 2, 64, 64) float
    tensor). An entry whose sha256 still matches is kept as it is (it says which generator made
    the file). True if the manifest changed."""
    path = out / task_filename(task)
    content = path.read_bytes()
    try:
        tensor = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle, zip and EOF errors alike)
        raise DatasetError(f"{path} cannot be loaded ({type(error).__name__}): not a task file; "
                           "remove or replace it") from None
    if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.ndim == 4
            and tuple(tensor.shape[1:]) == PLUME_SHAPE):
        raise DatasetError(f"{path} is not a task file: a float tensor (T, {', '.join(map(str, PLUME_SHAPE))}) "
                           f"expected, got {type(tensor).__name__} {tuple(getattr(tensor, 'shape', ()))}")
    entry = file_record(content, tensor)
    old = manifest["files"].get(path.name)
    if old is not None and old.get("sha256") == entry["sha256"]:
        return False
    if steps is None:
        generator = {"name": "unknown: recorded as found by tools.plume_generate --record"}
    else:
        import phi  # loaded by phi_modules() before any simulation

        setup = {k: v for k, v in dataclasses.asdict(setup_for(variant, task)).items() if k not in ("variant", "task")}
        generator = {"name": "tools.plume_generate", "version": GENERATOR_VERSION, "steps": steps,
                     "phiflow": str(getattr(phi, "__version__", "unknown")), **setup}
    manifest["files"][path.name] = {"task": task if isinstance(task, int) else list(task), **entry,
                                    "generator": generator}
    return True


def record_present(variant: str, out: str | Path, split: str = "all") -> list[Task]:
    """``--record``: add the variant's task files present in ``out`` to its manifest as they are
    (files made elsewhere, e.g. the original upstream data), simulating nothing, so that the loader
    checks them from then on; the tasks recorded or already listed. DatasetError if there are none."""
    out = Path(out)
    manifest = open_manifest(out, variant)
    present = [t for t in variant_tasks(variant, split) if (out / task_filename(t)).is_file()]
    if not present:
        raise DatasetError(f"no plume-{variant} task files (raw_data_*.pt) in {out} to record")
    if [t for t in present if record_task(manifest, out, variant, t, None)]:
        write_manifest(out, manifest)
    return present


def write_manifest(out: Path, manifest: dict) -> None:
    """``out/manifest.json`` atomically: JSON with one line per file, sorted by name."""
    head = {k: v for k, v in manifest.items() if k != "files"}
    files = ",\n".join(f"  {json.dumps(name)}: {json.dumps(entry)}"
                       for name, entry in sorted(manifest["files"].items()))
    atomic_write_text(out / MANIFEST, json.dumps(head)[:-1] + ', "files": {\n' + files + "\n}}\n")


def write_atomic(tensor: torch.Tensor, path: Path) -> None:
    """torch.save to a temporary file next to ``path``, fsynced, then renamed into place."""
    atomic_write(path, lambda handle: torch.save(tensor, handle))


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete temporary files left by generator processes that no longer run (a killed run)."""
    removed = []
    for path in out.glob(".*.tmp"):
        match = _TMP.match(path.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def generate_task(variant: str, task: Task, out: str | Path, steps: int = FULL_STEPS) -> tuple[Task, float]:
    """Simulate one task and write its file atomically; returns (task, seconds)."""
    start = time.perf_counter()
    setup = setup_for(variant, task)
    data = torch.from_numpy(simulate(setup, steps))
    if not torch.isfinite(data).all():
        raise DatasetError(f"{variant} task {task}: the simulation produced NaN or infinite values")
    write_atomic(data, Path(out) / task_filename(task))
    return task, time.perf_counter() - start


def _worker_init() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def generate(variant: str, out: str | Path, tasks: Iterable | None = None, split: str = "all",
             limit: int | None = None, steps: int = FULL_STEPS, workers: int = 1,
             progress: bool = True) -> dict[str, list[Task]]:
    """Generate the task files of a variant in ``out``; returns {"generated": [...], "skipped": [...]}
    (skipped: already complete). ``tasks`` (ids as :func:`parse_task` reads them) overrides ``split``;
    ``limit`` keeps the first tasks; ``workers`` > 1 runs tasks in that many processes."""
    from tqdm import tqdm

    check_variant(variant)
    if steps < 2:
        raise DatasetError(f"steps must be at least 2, got {steps}")
    if workers < 1:
        raise DatasetError(f"workers must be at least 1, got {workers}")
    chosen = variant_tasks(variant, split) if tasks is None else [parse_task(variant, t) for t in tasks]
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"limit must be at least 1, got {limit}")
        chosen = chosen[:limit]
    chosen = list(dict.fromkeys(chosen))
    for task in chosen:
        setup_for(variant, task)
    phi_modules()  # fail early with the install line
    out = Path(out)
    manifest = open_manifest(out, variant)
    out.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(out):
        log.info("removed %s, left by an interrupted run", path)
    frames = frames_for(variant, steps)
    skipped = [t for t in chosen if is_complete(out / task_filename(t), frames)]
    recorded = [t for t in skipped if record_task(manifest, out, variant, t, steps)]
    if recorded or not (out / MANIFEST).is_file():
        write_manifest(out, manifest)
        if recorded:
            log.info("recorded %d finished task files in %s", len(recorded), out / MANIFEST)
    todo = [t for t in chosen if t not in skipped]
    for task in todo:
        if (out / task_filename(task)).exists():
            log.warning("%s is incomplete or of another length; regenerating it", out / task_filename(task))
    log.info("plume-%s: %d tasks, %d already done, %d to simulate (%d steps, T = %d) in %s with %d worker(s)",
             variant, len(chosen), len(skipped), len(todo), steps, frames, out, workers)
    generated: list[Task] = []
    bar = tqdm(total=len(chosen), initial=len(skipped), desc=f"plume-{variant}", unit="task", disable=not progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for task in todo:
                done, seconds = generate_task(variant, task, out, steps)
                _finished(done, seconds, out, generated, bar, manifest, variant, steps)
        else:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                futures = {pool.submit(generate_task, variant, task, out, steps): task for task in todo}
                try:
                    for future in as_completed(futures):
                        done, seconds = future.result()
                        _finished(done, seconds, out, generated, bar, manifest, variant, steps)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return {"generated": generated, "skipped": skipped}


def _finished(task: Task, seconds: float, out: Path, generated: list, bar, manifest: dict, variant: str,
              steps: int) -> None:
    record_task(manifest, out, variant, task, steps)
    write_manifest(out, manifest)
    generated.append(task)
    bar.update(1)
    log.info("wrote %s (%.1f s)", out / task_filename(task), seconds)


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plume_generate",
                                     description="Regenerate the smoke-plume task files (T, 2, 64, 64) with phiflow.")
    parser.add_argument("--variant", required=True, help=f"one of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, help="output folder, the dataset root (default: data/plume-VARIANT, "
                        "with --small data/plume-VARIANT-small: where configs/data/ looks)")
    parser.add_argument("--split", default="all", choices=["all", "train", "test"],
                        help="which task list (default: all = train + held-out)")
    parser.add_argument("--tasks", nargs="+", metavar="ID",
                        help='task ids instead of a split: "i,j" (translation, rotation) or "i" (scale)')
    parser.add_argument("--limit", type=int, help="only the first LIMIT tasks")
    parser.add_argument("--steps", type=int, default=None, help=f"simulation steps (default {FULL_STEPS})")
    parser.add_argument("--small", action="store_true",
                        help=f"the 2-task set data=plume-VARIANT-small reads: the first training and the first "
                        f"held-out task, {SMALL_STEPS} steps (unless --tasks or --steps are given)")
    parser.add_argument("--record", action="store_true",
                        help="simulate nothing: record the task files present in --out (made elsewhere, e.g. the "
                        "original data) in its manifest as they are, so that every run checks them")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    steps = args.steps if args.steps is not None else (SMALL_STEPS if args.small else FULL_STEPS)
    suffix = "-small" if args.small else ""
    out = args.out if args.out is not None else Path("data") / f"plume-{args.variant}{suffix}"
    start = time.perf_counter()
    try:
        if args.record:
            recorded = record_present(args.variant, out, args.split)
            log.info("%d task files recorded in %s", len(recorded), out / MANIFEST)
            return 0
        tasks = args.tasks
        if args.small and tasks is None:
            check_variant(args.variant)
            train, test, _ = SMALL_SETS[f"plume-{args.variant}-small"]
            tasks = [*train, *test]
        result = generate(args.variant, out, tasks=tasks, split=args.split, limit=args.limit, steps=steps,
                          workers=args.workers, progress=not args.no_progress)
    except DatasetError as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished task files are kept, rerun the same command to resume")
        return 130
    log.info("done in %.1f s: %d generated, %d already present, in %s", time.perf_counter() - start,
             len(result["generated"]), len(result["skipped"]), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
