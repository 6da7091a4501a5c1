"""What ``trainer.resume`` continues, and with which configuration.

A resumed run continues in its own directory with the configuration saved in its checkpoint,
not with today's defaults. Overrides given on the resume command are applied on top:

    saved config  +  (compose(saved overrides + new overrides) - compose(saved overrides))

i.e. the keys the new overrides change (a config group such as ``optimizer=sgd`` changes all of
its keys) are set in the saved config; everything else stays as the run had it. Changes that
cannot continue the run (the model, the data, the symmetry, the task, the seed) are refused with
the key and both values; the others are returned so that the trainer applies them (a new
``optimizer.lr`` is the learning rate of the following epochs; a new optimizer class starts with
fresh optimizer state) and the run records them.

``trainer.resume``: ``true`` continues this run directory, else (single runs without an explicit
``hydra.run.dir``) the newest run of the experiment; a run directory or a checkpoint file in its
``checkpoints/`` continues that run; any other ``.pt`` file continues from that file in this
command's directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gmcnn.report import override_key
from gmcnn.training import checkpoint, targets
from gmcnn.training.config import ConfigError
from gmcnn.training.rundir import read_metrics

log = logging.getLogger(__name__)

# changing these would not continue the run: another model, other data, other symmetry
FIXED = ("task", "seed", "symmetry", "model", "data")
ADJUSTABLE = ("model.dropout", "data.root", "data.options.download")
_MISSING = object()


@dataclass
class Plan:
    """Where and how one run starts: its directory, effective config, the checkpoint it
    continues (None: a fresh start), the config changes on this resume (key -> (old, new))."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str]
    saved: dict[str, Any] | None = None
    source: Path | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """A finished run that the resume does not extend (more epochs)."""
        if self.saved is None or read_metrics(self.run_dir).get("status") != "finished":
            return False
        progress = checkpoint.Progress.from_dict(self.saved["progress"])
        early_stopped = progress.epoch < self.saved["config"]["trainer"]["epochs"]
        return early_stopped or self.cfg.trainer.epochs <= progress.epoch


def resume_source(resume: Any, run_dir: Path, search_siblings: bool) -> Path | None:
    """The checkpoint ``trainer.resume`` selects (None: start afresh)."""
    if resume is False or resume is None:
        return None
    if resume is True:
        own = run_dir / "checkpoints" / "last.pt"
        if own.is_file() or not search_siblings:
            return own if own.is_file() else None
        siblings = sorted(run_dir.parent.glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
        if not siblings:
            raise ConfigError(f"trainer.resume=true but no earlier run of this experiment has a "
                              f"checkpoint under {run_dir.parent}; pass a run directory instead")
        return siblings[-1]
    path = Path(str(resume)).expanduser().resolve()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: {path} does not exist; pass a run "
                          "directory or a checkpoint file")
    return path


def run_dir_of(source: Path, default: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/*.pt``), else ``default``."""
    run = source.parent.parent
    if source.parent.name == "checkpoints" and (run / "checkpoints" / "last.pt").is_file():
        return run
    return default


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """``saved`` with every key that ``new`` sets replaced by ``new``'s (``trainer.resume``
    dropped: it only selects what to continue)."""
    new = [o for o in new if override_key(o) != "trainer.resume"]
    keys = {override_key(o) for o in new}
    return [o for o in saved if override_key(o) not in keys and override_key(o) != "trainer.resume"] + new


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for key in [*old, *(k for k in new if k not in old)]:
            out.update(_diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix[:-1]: (old, new)}


def _set(container: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        container = container.setdefault(key, {})
    if value is _MISSING:
        container.pop(last, None)
    else:
        container[last] = value


def reconcile(saved_config: dict[str, Any], saved_overrides: list[str], new_overrides: list[str],
              compose: Any) -> tuple[DictConfig, list[str], dict[str, tuple[Any, Any]]]:
    """The saved config with the new overrides applied (see the module docstring), the merged
    overrides, and the changed keys (resolved old and new values)."""
    merged = merge_overrides(saved_overrides, new_overrides)
    effective = OmegaConf.to_container(OmegaConf.create(saved_config), resolve=False)
    if merged != [o for o in saved_overrides if override_key(o) != "trainer.resume"]:
        before = OmegaConf.to_container(compose(saved_overrides), resolve=False)
        after = OmegaConf.to_container(compose(merged), resolve=False)
        for path, (_, value) in _diff(before, after).items():
            if path != "trainer.resume":
                _set(effective, path, value)
    effective.setdefault("trainer", {})["resume"] = False
    cfg = OmegaConf.create(effective)
    old = _flatten(OmegaConf.to_container(OmegaConf.create(saved_config), resolve=True))
    new = _flatten(OmegaConf.to_container(cfg, resolve=True))
    changes = {key: (old.get(key), new.get(key)) for key in [*old, *(k for k in new if k not in old)]
               if key != "trainer.resume" and old.get(key, _MISSING) != new.get(key, _MISSING)}
    return cfg, merged, changes


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def check_continuable(changes: dict[str, tuple[Any, Any]], run_dir: Path) -> None:
    """Refuse a change of the model, data, symmetry, task or seed (ConfigError)."""
    for key, (old, new) in changes.items():
        fixed = any(key == f or key.startswith(f"{f}.") for f in FIXED)
        if fixed and key not in ADJUSTABLE:
            raise ConfigError(f"cannot continue run {run_dir} with {key}={new!r}: it was trained "
                              f"with {key}={old!r}; resume without that override, or start a new "
                              "run (trainer.resume=false) to change it")


def plan(cfg: DictConfig, run_dir: Path, overrides: list[str], *, search_siblings: bool,
         under_requeue: bool, compose: Any) -> Plan:
    """Decide where and with which config this command runs (see the module docstring).
    ``under_requeue``: a job that its launcher requeued (submitit) continues its own
    directory even without trainer.resume."""
    resume = cfg.trainer.resume
    own_checkpoint = run_dir / "checkpoints" / "last.pt"
    if resume is False and own_checkpoint.is_file():
        if not (under_requeue and read_metrics(run_dir).get("status") == "interrupted"):
            raise ConfigError(f"run directory {run_dir} already holds a run; continue it with "
                              "trainer.resume=true, or choose another directory (hydra.run.dir=...)")
        resume = True
    source = resume_source(resume, run_dir, search_siblings)
    if source is None:
        if resume is not False:
            log.info("trainer.resume: nothing to continue in %s; starting afresh", run_dir)
        return Plan(cfg, run_dir, list(overrides))
    saved = checkpoint.load(source)
    if "config" not in saved or "progress" not in saved:
        raise checkpoint.CheckpointError(f"checkpoint {source} is not a gmcnn training checkpoint "
                                         "(no config or progress); pass the run's last.pt")
    try:  # a received checkpoint's config is data: it may name only what the project instantiates
        targets.check_targets(saved["config"])
    except targets.TargetRefused as refused:
        raise ConfigError(f"checkpoint {source}: {refused}") from None
    target = run_dir_of(source, run_dir)
    effective, merged, changes = reconcile(saved["config"], list(saved.get("overrides", [])),
                                           list(overrides), compose)
    check_continuable(changes, target)
    return Plan(effective, target, merged, saved, source, changes)
