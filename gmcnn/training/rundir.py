"""The run directory: its files, one writer at a time, a status in metrics.json, nothing half-written.

* :class:`RunFiles`: where a run directory keeps its files (``checkpoints/last.pt``,
  ``checkpoints/best.pt``, ``metrics.json``, ``metrics.csv``, ``curves.png``, the ``.hydra/``
  record); the one place their names are spelled. What a checkpoint holds is checkpoint.py's.
* :class:`RunLock`: an exclusive ``fcntl.flock`` on ``<run dir>/.lock``, which holds the owner's
  pid and host for the message a second writer gets. The OS releases the lock when the process
  dies, so a lock file left by a killed run does not block the next one.
* :func:`write_status`: every run directory's ``metrics.json`` says ``"status"``: ``finished``
  (with the metrics), ``failed`` (with ``"error"``, the one-line message) or ``interrupted``
  (with ``"message"``: how to resume).
* :func:`is_fresh` / :func:`remove_fresh`: a directory Hydra has just made for this command
  (only ``.hydra/`` and the log file in it) can be removed when the run goes elsewhere (a resume)
  or fails before training. Only directories this command created are removed: ``gmcnn.cli``
  records which of the run directory's ancestors existed before Hydra ran
  (:func:`record_existing`); a directory that existed (a user's own empty folder given as
  ``hydra.run.dir`` or ``paths.output_dir``) keeps everything but the files Hydra wrote in it.
* :func:`unwritable`: the first existing ancestor of a directory to be created, if the process
  cannot create entries in it (read-only file system, permissions): ``os.access``, then creating
  and removing a probe directory in it (root passes ``access`` where writes still fail).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmcnn.io import atomic_write_text, remove_temporaries

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RECORD = ".hydra"  # Hydra's record of the command: config.yaml, overrides.yaml, hydra.yaml
HYDRA_FILES = {RECORD, "runner.log", LOCK_NAME}


@dataclass(frozen=True)
class RunFiles:
    """The files of the run directory ``root``."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """The training checkpoint (checkpoint.LAST): everything needed to continue the run."""
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        """The best-validation weights (checkpoint.BEST)."""
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        """The run's status and, when finished, its metrics (:func:`write_status`)."""
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        """One row per epoch (tracking.py)."""
        return self.root / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def relaxation(self) -> Path:
        """The symmetry-breaking maps of a relaxed model (diagnostics.plot_relaxation)."""
        return self.root / "relaxation.png"

    @property
    def rollout_rmse(self) -> Path:
        """The test RMSE per roll-out step (diagnostics.plot_step_scores)."""
        return self.root / "rollout_rmse.png"

    @property
    def config(self) -> Path:
        """The run's effective configuration, as Hydra (or a resume: :func:`record_config`) wrote it."""
        return self.root / RECORD / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.root / RECORD / "overrides.yaml"

    @property
    def hydra(self) -> Path:
        return self.root / RECORD / "hydra.yaml"

    @classmethod
    def holding(cls, checkpoint: Path) -> RunFiles | None:
        """The run whose last.pt sits beside ``checkpoint`` in its ``checkpoints/`` (None: a file
        from elsewhere)."""
        files = cls(checkpoint.parent.parent)
        return files if checkpoint.parent == files.checkpoints and files.last.is_file() else None


class RunDirectoryBusy(Exception):
    """Another live process writes to this run directory."""


class RunLock:
    """Exclusive lock on a run directory, held from ``acquire`` until ``release`` (or the
    process's end). On acquiring, temporary files a killed writer left are removed."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self._handle = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                handle.close()
                raise RunDirectoryBusy(
                    f"run directory {self.path.parent} is in use by {owner}; wait for it to end "
                    "or choose another directory (hydra.run.dir=...)") from None
            try:  # the file may have been removed by its previous owner after we opened it
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        for directory in (self.path.parent, RunFiles(self.path.parent).checkpoints):
            for stale in remove_temporaries(directory):
                log.info("removed %s, a partial write of a killed run", stale)
        return self

    def release(self) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json ({} if missing or unreadable)."""
    try:
        return json.loads(RunFiles(run_dir).metrics.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """metrics.json with ``status`` ("finished", "failed" or "interrupted") and ``fields``."""
    write_json(RunFiles(run_dir).metrics, {**fields, "status": status})


_existed: dict[Path, bool] = {}  # directory -> whether it existed before Hydra ran (record_existing)


def record_existing(directory: Path) -> None:
    """Note which of ``directory`` and its ancestors exist now, before Hydra creates any of them:
    :func:`remove_fresh` removes only directories that did not."""
    directory = Path(os.path.abspath(directory))
    for path in (directory, *directory.parents):
        _existed[path] = path.is_dir()


def _created_here(directory: Path) -> bool | None:
    """Whether this command created ``directory`` (None: not recorded)."""
    existed = _existed.get(Path(os.path.abspath(directory)))
    return None if existed is None else not existed


def unwritable(directory: Path) -> Path | None:
    """``directory`` or its first existing ancestor, if this process cannot create entries in
    it (a read-only file system, permissions); None if it can."""
    path = Path(os.path.abspath(directory))
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        return path
    probe = path / f".gmcnn-write-test-{os.getpid()}"  # access() trusts root on pseudo file systems
    try:
        probe.mkdir()
        probe.rmdir()
    except FileExistsError:
        return None
    except OSError:
        return path
    return None


def is_fresh(run_dir: Path) -> bool:
    """True if ``run_dir`` holds nothing but what Hydra writes at start (nothing of a run)."""
    return run_dir.is_dir() and all(p.name in HYDRA_FILES for p in run_dir.iterdir())


def remove_fresh(run_dir: Path) -> bool:
    """Remove ``run_dir`` if it is fresh (closing the log file Hydra opened in it) and this
    command created it (else only the files Hydra wrote in it), and its parents that this command
    created if they are then empty; True if it was fresh."""
    if not is_fresh(run_dir):
        return False
    redirect_log_files(run_dir, None)
    if _created_here(run_dir) is False:  # the user's own folder: only what Hydra wrote
        for name in HYDRA_FILES:
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return True
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:  # the experiment's folder Hydra made for it, if now empty
        if not _created_here(parent):
            break
        try:
            parent.rmdir()
        except OSError:
            break
    return True


def redirect_log_files(old_dir: Path, new_dir: Path | None) -> None:
    """Move the root logger's file handlers writing into ``old_dir`` to the same file name in
    ``new_dir`` (appending), or close them if ``new_dir`` is None."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        filename = getattr(handler, "baseFilename", None)
        if not isinstance(handler, logging.FileHandler) or Path(filename).parent != old_dir:
            continue
        root.removeHandler(handler)
        handler.close()
        if new_dir is not None:
            moved = logging.FileHandler(new_dir / Path(filename).name, mode="a")
            moved.setFormatter(handler.formatter)
            moved.setLevel(handler.level)
            root.addHandler(moved)


def record_config(run_dir: Path, cfg: Any, overrides: list[str], choices: dict[str, Any] | None = None) -> None:
    """Write the run's effective configuration and overrides to ``.hydra/`` (where Hydra and
    ``python -m gmcnn.report`` read them), replacing what the resume command composed; with
    ``choices`` (the run's config-group options) also in ``hydra.yaml``, so that the report names
    the run's model, not the resume command's default."""
    from omegaconf import OmegaConf

    files = RunFiles(run_dir)
    atomic_write_text(files.config, OmegaConf.to_yaml(cfg))
    atomic_write_text(files.overrides, OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if choices and files.hydra.is_file():
        recorded = OmegaConf.load(files.hydra)
        OmegaConf.update(recorded, "hydra.runtime.choices", choices, merge=False)
        OmegaConf.update(recorded, "hydra.overrides.task", list(overrides), merge=False)
        atomic_write_text(files.hydra, OmegaConf.to_yaml(recorded))
