"""What ``trainer.resume`` continues, with which configuration (:func:`plan`), and restoring it
into the trainer (:func:`restore`).

A resumed run continues in its own directory with the configuration saved in its checkpoint,
not with today's defaults. Overrides given on the resume command are applied on top:

    saved config  +  (compose(saved overrides + new overrides) - compose(saved overrides))

i.e. the keys the new overrides change (a config group such as ``optimizer=sgd`` changes all of
its keys) are set in the saved config; everything else stays as the run had it. Changes that
cannot continue the run (the model, the data, the symmetry, the task, the seed; also another
choice of the ``model`` or ``data`` group) are refused with the key and both values; the others
are returned so that the trainer applies them (a new ``optimizer.lr`` is the learning rate of the
following epochs; a new optimizer class starts with fresh optimizer state; a new
``trainer.batch_size`` in a run stopped mid-epoch applies from the next epoch, the stopped epoch
finishing with its own batches) and the run records them.

``trainer.resume``: ``true`` continues this run directory (given ``hydra.run.dir``, or a sweep
job's), else the latest *unfinished* run of the experiment with the same model (``model._target_``)
in ``outputs/<name>/``: newer finished runs and runs of other models are skipped, and the log
says which run continues and which were skipped (a run that a live process holds is chosen and
refused by its lock, naming the process). A run directory or a checkpoint file in its
``checkpoints/`` continues that run; any other ``.pt`` file continues from that file in this
command's directory. A run stopped before its first checkpoint (status ``interrupted``, no
checkpoint) continues from its start: afresh in its own directory with its recorded overrides
(metrics.json, else ``.hydra/overrides.yaml``) and the new ones, refused as above.

Making a :class:`Plan` checks its config (config.validate): the one check of a command's config,
on the config the run will have (a resumed run's saved config with this command's changes),
before any data is loaded.

:func:`restore` loads the checkpoint's trainer state, RNG states and progress, records this
resume's changes, and gives a run continued from a checkpoint file of elsewhere its best.pt: the
one beside that file (checked against checkpoint.BEST first), else the restored weights.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from gmcnn.report import override_key
from gmcnn.training import checkpoint, distributed, targets
from gmcnn.training.checkpoint import Progress
from gmcnn.training.config import ConfigError, validate
from gmcnn.training.rundir import RunFiles, read_metrics

if TYPE_CHECKING:
    from gmcnn.training.engine import Trainer

log = logging.getLogger(__name__)

# changing these would not continue the run: another model, other data, other symmetry
FIXED = ("task", "seed", "symmetry", "model", "data")
ADJUSTABLE = ("model.dropout", "data.root", "data.options.download")
_MISSING = object()


@dataclass
class Plan:
    """Where and how one run starts: its effective config (checked here: ConfigError), its
    directory, the run's overrides, the checkpoint it continues (None: a fresh start) and the
    config changes on this resume (key -> (old, new))."""

    cfg: DictConfig
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    saved: dict[str, Any] | None = None
    source: Path | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self.cfg)

    @property
    def finished(self) -> bool:
        """A finished run that the resume does not extend (more epochs)."""
        if self.saved is None or read_metrics(self.run_dir).get("status") != "finished":
            return False
        progress = checkpoint.Progress.from_dict(self.saved["progress"])
        early_stopped = progress.epoch < self.saved["config"]["trainer"]["epochs"]
        return early_stopped or self.cfg.trainer.epochs <= progress.epoch


def resume_argument(run_dir: Path) -> str:
    """``trainer.resume=<run_dir>`` as one shell word that Hydra reads back as that path (the path
    in Hydra's quotes if it holds characters its override grammar reads otherwise: a comma makes
    a sweep, brackets a list, ...)."""
    path = str(run_dir)
    if not re.fullmatch(r"[\w./~@+:%-]+(?:[ \t]+[\w./~@+:%-]+)*", path):  # Hydra keeps inner spaces
        path = f"'{path}'" if "'" not in path else '"' + path.replace('"', '\\"') + '"'
    return shlex.quote(f"trainer.resume={path}")


def _model_of(run: Path) -> str | None:
    """The model (``model._target_``) a run directory trained: its metrics.json, else its
    recorded config."""
    model = read_metrics(run).get("model")
    if model is None:
        try:
            model = OmegaConf.select(OmegaConf.load(RunFiles(run).config), "model._target_")
        except Exception:  # noqa: BLE001  (no or a broken config: unknown)
            return None
    return None if model is None else str(model)


def _activity(run: Path) -> float:
    """When a run last wrote its checkpoint or status (its recency among its siblings)."""
    files = RunFiles(run)
    return max((p.stat().st_mtime for p in (files.last, files.metrics) if p.is_file()), default=0.0)


def _has_checkpoint_or_stopped(run: Path) -> bool:
    return RunFiles(run).last.is_file() or read_metrics(run).get("status") == "interrupted"


def latest_unfinished(experiment_dir: Path, model: str, own: Path) -> Path:
    """The latest unfinished run of ``model`` in ``experiment_dir`` (see the module docstring);
    logs which it is and which newer runs were skipped; ConfigError if there is none."""
    runs = sorted((p for p in experiment_dir.iterdir() if p.is_dir() and p.resolve() != own.resolve()
                   and _has_checkpoint_or_stopped(p)), key=_activity, reverse=True) \
        if experiment_dir.is_dir() else []
    skipped = []
    for run in runs:
        status = read_metrics(run).get("status") or "killed"
        run_model = _model_of(run)
        if status == "finished":
            skipped.append(f"{run.name} (finished)")
        elif run_model is not None and run_model != model:
            skipped.append(f"{run.name} (model {run_model})")
        else:  # a run a live process holds is refused by its lock, naming the process
            log.info("trainer.resume=true: continuing %s, the latest unfinished run of model %s (%s)%s",
                     run, model, status, f"; skipped newer runs: {', '.join(skipped)}" if skipped else "")
            return run
    raise ConfigError(f"trainer.resume=true but no unfinished run of model {model} is under "
                      f"{experiment_dir}" + (f" (skipped: {', '.join(skipped)})" if skipped else "")
                      + "; pass a run directory (trainer.resume=DIR) or start a new run")


def recorded_overrides(run: Path) -> list[str]:
    """The overrides a run was started with: its metrics.json (written when it stopped), else
    its ``.hydra/overrides.yaml``."""
    recorded, record = read_metrics(run).get("overrides"), RunFiles(run).overrides
    if recorded is None and record.is_file():
        recorded = OmegaConf.to_container(OmegaConf.load(record))
    return [str(o) for o in recorded or []]


def resume_source(resume: Any, run_dir: Path, search_siblings: bool, model: str = "") -> Path | None:
    """What ``trainer.resume`` selects: a checkpoint file, a run directory stopped before its
    first checkpoint, or None (start afresh)."""
    if resume is False or resume is None:
        return None
    if resume is True:
        own = RunFiles(run_dir).last
        if own.is_file():
            return own
        if read_metrics(run_dir).get("status") == "interrupted":
            return run_dir  # stopped before its first checkpoint
        if not search_siblings:
            return None
        run = latest_unfinished(run_dir.parent, model, run_dir)
        return RunFiles(run).last if RunFiles(run).last.is_file() else run
    path = Path(str(resume)).expanduser().resolve()
    if path.is_dir() and not RunFiles(path).last.is_file() and read_metrics(path).get("status") == "interrupted":
        return path  # stopped before its first checkpoint
    if path.is_dir():
        path = RunFiles(path).last
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: {path} does not exist; pass a run "
                          "directory or a checkpoint file")
    return path


def run_dir_of(source: Path, default: Path) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/*.pt``), else ``default``."""
    files = RunFiles.holding(source)
    return default if files is None else files.root


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


def refusal(run_dir: Path, key: str, old: Any, new: Any) -> ConfigError:
    return ConfigError(f"cannot continue run {run_dir} with {key}={new!r}: it was trained with "
                       f"{key}={old!r}; resume without that override, or start a new run "
                       "(trainer.resume=false) to change it")


def check_continuable(changes: dict[str, tuple[Any, Any]], run_dir: Path) -> None:
    """Refuse a change of the model, data, symmetry, task or seed (ConfigError)."""
    for key, (old, new) in changes.items():
        fixed = any(key == f or key.startswith(f"{f}.") for f in FIXED)
        if fixed and key not in ADJUSTABLE:
            raise refusal(run_dir, key, old, new)


def check_group_choices(saved_overrides: list[str], new_overrides: list[str], compose: Any,
                        run_dir: Path) -> None:
    """Refuse another option of a fixed config group (``model=cnn`` for a GM run), before
    composing it with the run's own keys (which that option may not have)."""
    groups = {override_key(o): o.split("=", 1)[1] for o in new_overrides
              if "=" in o and not o.startswith("~") and override_key(o) in FIXED}
    if not groups:
        return
    choices = compose(saved_overrides, hydra_config=True).hydra.runtime.choices
    for group, choice in groups.items():
        if group in choices and choices[group] != choice:
            raise refusal(run_dir, group, choices[group], choice)


def plan(cfg: DictConfig, run_dir: Path, overrides: list[str], *, search_siblings: bool,
         under_requeue: bool, compose: Any) -> Plan:
    """Decide where and with which config this command runs (see the module docstring).
    ``under_requeue``: a job that its launcher requeued (submitit) continues its own
    directory even without trainer.resume."""
    resume = cfg.trainer.resume
    own_checkpoint = RunFiles(run_dir).last
    if resume is False and own_checkpoint.is_file():
        if not (under_requeue and read_metrics(run_dir).get("status") == "interrupted"):
            raise ConfigError(f"run directory {run_dir} already holds a run; continue it with "
                              "trainer.resume=true, or choose another directory (hydra.run.dir=...)")
        resume = True
    source = resume_source(resume, run_dir, search_siblings, str(cfg.model._target_))
    if source is None:
        if resume is not False:
            log.info("trainer.resume: nothing to continue in %s; starting afresh", run_dir)
        return Plan(cfg, run_dir, list(overrides))
    if source.is_dir():  # stopped before its first checkpoint: its start again, in its directory
        recorded = recorded_overrides(source)
        merged = merge_overrides(recorded, list(overrides))
        log.info("trainer.resume: %s stopped before its first checkpoint; starting it again", source)
        check_group_choices(recorded, list(overrides), compose, source)
        try:
            before, fresh = compose(merge_overrides(recorded, [])), compose(merged)
        except HydraException as error:
            raise ConfigError(f"cannot restart run {source} with {' '.join(merged)}: "
                              f"{str(error).splitlines()[0]}") from None
        old, new = (_flatten(OmegaConf.to_container(c, resolve=True)) for c in (before, fresh))
        check_continuable({k: (old.get(k), new.get(k)) for k in {*old, *new} if old.get(k) != new.get(k)}, source)
        OmegaConf.update(fresh, "trainer.resume", False)
        return Plan(fresh, source, merged, source=source)
    saved = checkpoint.load(source)
    if "config" not in saved or "progress" not in saved:
        raise checkpoint.CheckpointError(f"checkpoint {source} is not a gmcnn training checkpoint "
                                         "(no config or progress); pass the run's last.pt")
    try:  # a received checkpoint's config is data: it may name only what the project instantiates
        targets.check_targets(saved["config"])
    except targets.TargetRefused as refused:
        raise ConfigError(f"checkpoint {source}: {refused}") from None
    target = run_dir_of(source, run_dir)
    saved_overrides = list(saved.get("overrides", []))
    check_group_choices(saved_overrides, list(overrides), compose, target)
    try:
        effective, merged, changes = reconcile(saved["config"], saved_overrides, list(overrides), compose)
    except HydraException as error:
        raise ConfigError(f"cannot continue run {target} with {' '.join(overrides)}: "
                          f"{str(error).splitlines()[0]}") from None
    check_continuable(changes, target)
    return Plan(effective, target, merged, saved, source, changes)


def restore(plan: Plan, trainer: Trainer, files: RunFiles) -> Progress:
    """Load the trainer, RNG states and progress of the checkpoint ``plan`` continues into the
    run whose files are ``files``, record this resume's configuration changes, and (rank 0) give a
    run continued from a checkpoint file of elsewhere its best.pt (see the module docstring)."""
    saved = plan.saved
    trainer.load_state_dict(saved["trainer"], plan.changes)
    checkpoint.set_rng_state(saved["rng"])
    progress = Progress.from_dict(saved["progress"])
    if progress.step and progress.batch_size is None:  # written before batch_size was recorded
        progress.batch_size = saved["config"]["trainer"]["batch_size"]
    if progress.step and "trainer.batch_size" in plan.changes:
        log.info("trainer.batch_size changes from epoch %d: epoch %d finishes with its batches of %d",
                 progress.epoch + 2, progress.epoch + 1, progress.batch_size)
    if not distributed.is_main():  # rank 0 carries the running sums of a mid-epoch checkpoint
        progress.loss_sum, progress.score_sum, progress.seen = 0.0, 0.0, 0
    if plan.changes:
        changes = {key: [old, new] for key, (old, new) in plan.changes.items()}
        progress.changes.append({"epoch": progress.epoch, "step": progress.step, "changes": changes})
        log.info("configuration changes from epoch %d: %s", progress.epoch + 1,
                 ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in plan.changes.items()))
    if plan.source.parent != files.checkpoints and distributed.is_main():  # a checkpoint from elsewhere
        beside = plan.source.with_name(files.best.name)
        if beside.is_file():
            best = checkpoint.load(beside, checkpoint.BEST)  # refused if unsafe, before it is used
            checkpoint.save_best(files, best["model"], best["epoch"])
        else:
            checkpoint.save_best(files, trainer.model.state_dict(), progress.epoch)
    where = f"epoch {progress.epoch}" + (f", step {progress.step}" if progress.step else "")
    log.info("resumed from %s after %s (model %s)", plan.source, where, plan.cfg.model._target_)
    return progress
