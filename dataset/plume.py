"""Smoke-plume and JetFlow task files and the task lists of docs/design.md §4.2.

Format: one file per task in ``root``, ``raw_data_{i}_{j}.pt`` for a pair task (translation,
rotation, JetFlow) and ``raw_data_{i}.pt`` for a scale task, each a ``torch.save``-d tensor
(T, 2, H, W) float32 laid out [time, (v_x, v_y), y, x]: 64 x 64 for the plumes, 62 x 23 for JetFlow.
The task lists and time windows below are the ones ``configs/data/{plume-*,jetflow}.yaml`` hold as
YAML lists; the training protocol built on them belongs to the dynamics engine.

Manifest (docs/design.md §4.1): a folder written by ``tools.plume_generate`` holds ``manifest.json``,
{"format": 1, "dataset": "plume-<variant>", "files": {name: {"task", "shape", "dtype", "bytes",
"sha256", "generator": {"name", "version", "steps", ...simulation parameters}}}}. When it is present
every task file read is checked against its entry before use (listed, its size, then the sha256 of
its bytes; hashing the 36 full-size files of a variant costs 0.5 to 1.5 s, so it is done at every
load, no cache), so a truncated, edited or mixed-up file stops the run naming the file. A folder without a
manifest (files copied from elsewhere, e.g. the original upstream ones) loads after one warning,
checked for shape and finite values only. The ``plume-<variant>-small`` sets are what
``python -m tools.plume_generate --small`` writes: the first training and the first held-out task,
SMALL_STEPS steps, read with SMALL_WINDOWS.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dataset.registry import DatasetError, Splits, register

log = logging.getLogger(__name__)

Task = tuple[int, int] | int
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_UNLISTED: set[Path] = set()  # folders without a manifest already warned about

PLUME_SHAPE = (2, 64, 64)
JETFLOW_SHAPE = (2, 62, 23)

TRANSLATION_TEST = [(32, 20), (32, 5), (24, 20), (16, 25), (24, 5), (16, 10), (40, 20), (8, 25), (24, 25), (40, 10)]
TRANSLATION_TRAIN = [(i, j) for i in range(8, 57, 8) for j in range(5, 26, 5) if (i, j) not in TRANSLATION_TEST]
ROTATION_TEST = [(6, 1), (14, 1), (15, 2), (10, 1), (18, 1), (20, 3), (24, 3), (13, 0), (21, 0), (5, 0)]
ROTATION_TRAIN = [(k, (k - 1) % 4) for k in range(1, 37) if (k, (k - 1) % 4) not in ROTATION_TEST]
SCALE_TEST = [5, 30, 16, 23, 33, 6, 17, 22, 21, 32]
SCALE_TRAIN = [i for i in range(38) if i not in SCALE_TEST]
JETFLOW_TRAIN = [(1, 4), (3, 4), (2, 4), (1, 1), (2, 6), (3, 5), (3, 3), (3, 1), (1, 8), (3, 8), (3, 6), (2, 1),
                 (1, 3), (1, 6), (2, 8), (1, 7), (1, 2), (2, 2)]
JETFLOW_TEST = [(2, 3), (3, 7), (2, 7), (2, 5), (3, 2), (1, 5)]

# name -> (train tasks, held-out test tasks, frame shape (C, H, W))
TASK_SETS: dict[str, tuple[list[Task], list[Task], tuple[int, int, int]]] = {
    "plume-translation": (TRANSLATION_TRAIN, TRANSLATION_TEST, PLUME_SHAPE),
    "plume-rotation": (ROTATION_TRAIN, ROTATION_TEST, PLUME_SHAPE),
    "plume-scale": (SCALE_TRAIN, SCALE_TEST, PLUME_SHAPE),
    "jetflow": (JETFLOW_TRAIN, JETFLOW_TEST, JETFLOW_SHAPE),
}

# docs/design.md §4.2: input frames [mid - input_frames + t, mid + t), target [mid + t, mid + t + out_len);
# ranges of the start index t are half-open [start, stop).
WINDOWS: dict[str, int | list[int]] = {
    "input_frames": 10, "mid": 12,
    "train_starts": [0, 160], "valid_starts": [160, 200], "train_out_len": 6,
    "future_starts": [200, 250], "domain_starts": [0, 100], "test_out_len": 20,
}


# the --small sets of tools.plume_generate: the first training and the first held-out task of a
# variant, SMALL_STEPS simulation steps (rotation: T = 49, the others 50), windows that fit them
# (a training task needs mid + 17 + 20 = 49 frames, a held-out one mid + 7 + 20 = 39)
SMALL_STEPS = 50
SMALL_WINDOWS: dict[str, int | list[int]] = {
    "input_frames": 10, "mid": 12,
    "train_starts": [0, 12], "valid_starts": [12, 16], "train_out_len": 3,
    "future_starts": [16, 18], "domain_starts": [0, 8], "test_out_len": 20,
}
SMALL_SETS: dict[str, tuple[list[Task], list[Task], tuple[int, int, int]]] = {
    f"{name}-small": ([train[0]], [test[0]], shape)
    for name, (train, test, shape) in TASK_SETS.items() if name.startswith("plume-")}


def as_task(task: int | Iterable[int]) -> Task:
    """A task as an int (scale) or an (i, j) tuple, from an int or a 2-element list/tuple."""
    if isinstance(task, int) and not isinstance(task, bool):
        return task
    try:
        items = tuple(int(x) for x in task)
    except (TypeError, ValueError):
        items = ()
    if len(items) != 2:
        raise DatasetError(f"a task is an integer or a pair [i, j], got {task!r}")
    return items


def task_filename(task: Task, pattern: str | None = None) -> str:
    """``raw_data_{i}_{j}.pt`` or ``raw_data_{i}.pt``, or ``pattern`` formatted with ``i`` and ``j``."""
    i, j = (task, None) if isinstance(task, int) else task
    if pattern is None:
        pattern = "raw_data_{i}.pt" if j is None else "raw_data_{i}_{j}.pt"
    return pattern.format(i=i, j=j)


def frames_needed(windows: dict = WINDOWS, held_out: bool = False) -> int:
    """Frames a task file must have for the last test window (future tests on training tasks,
    domain tests on held-out tasks)."""
    starts = windows["domain_starts" if held_out else "future_starts"]
    return windows["mid"] + starts[1] - 1 + windows["test_out_len"]


def file_record(content: bytes, tensor: torch.Tensor) -> dict[str, Any]:
    """A task file's manifest entry without its task and generator: bytes, sha256, shape, dtype."""
    return {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(),
            "shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def read_manifest(root: Path) -> dict[str, Any] | None:
    """``root/manifest.json``, or None if there is none; DatasetError if it is unreadable."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("not a manifest object with a 'files' mapping")
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path} is unreadable ({error}); delete it and rerun the generator command "
                           "that made the folder (it records the finished files again)") from None
    return manifest


def _variant(dataset: str | None) -> str:
    """The generator's --variant of a plume data set (any of them for another one or None)."""
    if dataset is None or not dataset.startswith("plume-"):
        return "rotation|translation|scale"
    return dataset.removeprefix("plume-").removesuffix("-small")


def _regenerate_hint(root: Path, dataset: str | None) -> str:
    small = " --small" if dataset is not None and dataset.endswith("-small") else ""
    return f"`python -m tools.plume_generate --variant {_variant(dataset)}{small} --out {root}`"


def _check_against_manifest(path: Path, content: bytes, entry: dict[str, Any] | None, root: Path,
                            dataset: str | None) -> None:
    """DatasetError naming ``path`` if its bytes differ from its manifest entry."""
    manifest = root / MANIFEST
    hint = _regenerate_hint(root, dataset)
    if entry is None:
        raise DatasetError(f"{path} is not listed in {manifest}: a file from elsewhere or an interrupted "
                           f"generator run; rerun {hint} to record (or replace) it")
    if len(content) != entry.get("bytes"):
        raise DatasetError(f"{path} has {len(content):,} bytes, {manifest} records {entry.get('bytes'):,}: "
                           f"it is truncated or was replaced; regenerate it with {hint}")
    digest = hashlib.sha256(content).hexdigest()
    if digest != entry.get("sha256"):
        raise DatasetError(f"{path} does not match {manifest} (sha256 {digest[:12]}..., recorded "
                           f"{str(entry.get('sha256'))[:12]}...): it was edited or replaced by another "
                           f"data set's file; regenerate it with {hint}")


def load_tasks(root: Path, tasks: Sequence, frame_shape: Sequence[int] = PLUME_SHAPE,
               min_frames: int = 1, pattern: str | None = None,
               dataset: str | None = None) -> dict[Task, torch.Tensor]:
    """The (T, C, H, W) float32 tensor of every task, keyed by task (an int or an (i, j) tuple);
    raises listing every missing file at once, or naming the first file that does not match the
    folder's manifest (if it has one) or is unreadable, not floating point, non-finite, of the
    wrong frame shape or shorter than ``min_frames``. ``dataset``: the data set expected (e.g.
    "plume-rotation"); a manifest of another one is refused, and a folder without a manifest is
    loaded after a warning."""
    root = Path(root)
    keys = [as_task(task) for task in tasks]
    manifest = read_manifest(root)
    base = dataset.removesuffix("-small") if dataset else None
    if manifest is not None and base is not None and manifest.get("dataset") != base:
        raise DatasetError(f"{root / MANIFEST} says the folder holds {manifest.get('dataset')} task files, not "
                           f"{base}: point data.root at the {base} folder or regenerate it with "
                           f"{_regenerate_hint(root, dataset)}")
    missing = [task_filename(k, pattern) for k in keys if not (root / task_filename(k, pattern)).is_file()]
    if missing:
        listed = ""
        if manifest is not None:
            names = sorted(manifest["files"])
            listed = (f" ({MANIFEST} there lists {len(names)} task files: {', '.join(names[:6])}"
                      f"{', ...' if len(names) > 6 else ''}; the 2-task set of `--small` is read with "
                      "data=plume-<variant>-small)")
        raise DatasetError(f"{len(missing)} of {len(keys)} task files missing in {root}: {', '.join(missing)}"
                           f"{listed}. Copy the raw_data files there or regenerate them with "
                           f"{_regenerate_hint(root, dataset)} "
                           f"(from the repository root, with `pip install -e '.[plume]'`)")
    if manifest is None and dataset is not None and dataset.startswith("plume-") and root not in _UNLISTED:
        _UNLISTED.add(root)  # once per folder and process (a build reads the training and held-out tasks)
        log.warning("%s has no %s: its task files are checked for shape and finite values only, not against "
                    "checksums (files copied from elsewhere? `python -m tools.plume_generate --variant %s --record "
                    "--out %s` records them as they are)", root, MANIFEST, _variant(dataset), root)
    frame_shape = tuple(frame_shape)
    out: dict[Task, torch.Tensor] = {}
    for key in keys:
        path = root / task_filename(key, pattern)
        try:
            content = path.read_bytes()
        except OSError as error:
            raise DatasetError(f"{path} cannot be read ({error.strerror or error}); check its permissions") from None
        if manifest is not None:
            _check_against_manifest(path, content, manifest["files"].get(path.name), root, dataset)
        try:
            data = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (pickle, zip and EOF errors alike)
            raise DatasetError(f"{path} cannot be loaded ({type(error).__name__}: {error}); "
                               f"it is corrupt or truncated: replace it") from None
        if not isinstance(data, torch.Tensor) or not data.is_floating_point():
            raise DatasetError(f"{path} must hold a float tensor, got {type(data).__name__} "
                               f"{getattr(data, 'dtype', '')}")
        if data.ndim != 4 or tuple(data.shape[1:]) != frame_shape or len(data) < min_frames:
            raise DatasetError(f"{path} has shape {tuple(data.shape)}, expected (T, {', '.join(map(str, frame_shape))})"
                               f" with T >= {min_frames}")
        if not torch.isfinite(data).all():
            raise DatasetError(f"{path} contains NaN or infinite values; regenerate it")
        out[key] = data.to(torch.float32).contiguous()
    return out


class WindowDataset(Dataset):
    """Input/target windows of docs/design.md §4.2 over several task series (T, C, H, W).

    For a series and a start index t: input = frames [mid - input_frames + t, mid + t) stacked as
    (input_frames * C, H, W); target = frames [mid + t, mid + t + out_len) as (out_len, C, H, W).
    Items run over every series and every t in ``range(*starts)``.
    """

    def __init__(self, series: Sequence[torch.Tensor], starts: Sequence[int], input_frames: int,
                 mid: int, out_len: int):
        self.series, self.input_frames, self.mid, self.out_len = list(series), input_frames, mid, out_len
        self.items = [(k, t) for k in range(len(self.series)) for t in range(*starts)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, t = self.items[i]
        frames = self.series[k]
        inputs = frames[self.mid - self.input_frames + t:self.mid + t]
        return inputs.flatten(0, 1), frames[self.mid + t:self.mid + t + self.out_len]


def _check_windows(windows: dict) -> None:
    keys = set(WINDOWS)
    if set(windows) != keys:
        raise DatasetError(f"windows must have exactly the keys {', '.join(sorted(keys))}; got "
                           f"{', '.join(sorted(windows))}")
    if windows["mid"] < windows["input_frames"]:
        raise DatasetError(f"windows.mid={windows['mid']} must be >= windows.input_frames="
                           f"{windows['input_frames']} (the first input frame is mid - input_frames)")
    for key in ("train_starts", "valid_starts", "future_starts", "domain_starts"):
        low, high = windows[key]
        if not 0 <= low < high:
            raise DatasetError(f"windows.{key}={windows[key]} must be a range [start, stop) with "
                               "0 <= start < stop")


def _register_dynamics(name: str) -> None:
    train_default, test_default, frame_shape = {**TASK_SETS, **SMALL_SETS}[name]
    default_windows = SMALL_WINDOWS if name in SMALL_SETS else WINDOWS

    @register(name)
    def build(root: Path, train_tasks: Sequence = train_default,
              test_tasks: Sequence = test_default, windows: dict | None = None,
              pattern: str | None = None) -> Splits:
        """Train windows (train_starts) and validation windows (valid_starts, train_out_len) on
        the training tasks; test sets "future" (future_starts on the training tasks) and "domain"
        (domain_starts on the held-out tasks), both with test_out_len."""
        w = {**default_windows, **(windows or {})}
        _check_windows(w)
        train_end = max(w["valid_starts"][1], w["train_starts"][1]) + w["train_out_len"] - 1
        need = {"train": max(w["mid"] + train_end, frames_needed(w, held_out=False)),
                "held-out": frames_needed(w, held_out=True)}
        series = {}
        for role, tasks in (("train", train_tasks), ("held-out", test_tasks)):
            loaded = load_tasks(root, tasks, frame_shape, pattern=pattern, dataset=name)
            short = [task_filename(t, pattern) for t, x in loaded.items() if len(x) < need[role]]
            if short:
                raise DatasetError(
                    f"{len(short)} {role} task files in {root} have fewer than {need[role]} frames, "
                    f"which data.options.windows needs ({', '.join(short)}); shorten the windows or "
                    "regenerate the tasks with more steps")
            series[role] = list(loaded.values())
        frames = dict(input_frames=w["input_frames"], mid=w["mid"])
        return Splits(
            WindowDataset(series["train"], w["train_starts"], out_len=w["train_out_len"], **frames),
            WindowDataset(series["train"], w["valid_starts"], out_len=w["train_out_len"], **frames),
            None, num_classes=0, in_channels=frame_shape[0], image_shape=frame_shape[1:],
            test_sets={
                "future": WindowDataset(series["train"], w["future_starts"],
                                        out_len=w["test_out_len"], **frames),
                "domain": WindowDataset(series["held-out"], w["domain_starts"],
                                        out_len=w["test_out_len"], **frames)})


for _name in [*TASK_SETS, *SMALL_SETS]:
    _register_dynamics(_name)
