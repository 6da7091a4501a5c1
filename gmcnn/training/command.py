"""One command of the runner, from a composed config to its exit status.

``run_command(cfg, hydra_cfg)`` is what ``python runner.py ...`` does inside Hydra: lock the run
directory, plan the run (a fresh one, or the run that ``trainer.resume`` continues, in its own
directory; making the plan checks its config: :mod:`gmcnn.training.resume`), set the process-wide
memory setting, train it (:func:`gmcnn.training.run`) and record its status. Exit status: 0 done
(or already finished), 1 an error the user can fix (one line, no traceback), 3 interrupted by a
signal and resumable (the line says the command, quoted for the shell). The stop signals are handled for
the whole command (signals.py): a signal at any point, once or twice, ends with exit status 3.
Every run directory left behind has a status in its metrics.json ("finished", "failed" with the
error, "interrupted" with how to resume), the model target and the run's overrides; a single run
that fails before training, or ``summary_only=true``, leaves no directory it created. In a sweep
(``-m``) a failed job does not stop the others: its error goes to its metrics.json (read by
``python -m gmcnn.report``), and the sweep goes on; finished jobs of a resumed sweep are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gmcnn.cli import ExitStatus
from gmcnn.training import checkpoint
from gmcnn.training.checkpoint import CheckpointError
from gmcnn.training.config import ConfigError, resolve_device
from gmcnn.training.engine import TrainingDiverged, run
from gmcnn.training.memory import OutOfMemory, retain_freed_memory
from gmcnn.training.resume import Plan, merge_overrides, plan, resume_argument
from gmcnn.training.rundir import (
    RunDirectoryBusy,
    RunFiles,
    RunLock,
    is_fresh,
    read_metrics,
    record_config,
    redirect_log_files,
    remove_fresh,
    unwritable,
    write_status,
)
from gmcnn.training.signals import RunInterrupted, StopSignals

log = logging.getLogger(__name__)

USER_ERRORS = (ConfigError, CheckpointError, TrainingDiverged, OutOfMemory, RunDirectoryBusy, OSError)


def run_command(cfg: DictConfig, hydra_cfg: DictConfig) -> float | None:
    """Run the command Hydra composed (``hydra_cfg``: ``HydraConfig.get()``); returns the run's best
    monitored validation value (what a sweeper optimises), None for a failed sweep job."""
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    writer = int(os.environ.get("RANK", "0")) == 0  # torchrun: rank 0 writes
    job = None
    # from here to the exit status a stop signal never ends the process by itself (signals.py)
    with StopSignals(ignore_after_stop=True) as stop, contextlib.ExitStack() as cleanup:
        try:
            if writer:
                cleanup.enter_context(RunLock(run_dir))
            explicit_dir = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
            planned = plan(cfg, run_dir, list(hydra_cfg.overrides.task),
                           search_siblings=not (sweeping or explicit_dir),
                           under_requeue="SUBMITIT_EXECUTOR" in os.environ, compose=compose)
            elsewhere = planned.run_dir.resolve() != run_dir.resolve()
            if writer and elsewhere and (blocked := unwritable(planned.run_dir)) is not None:
                raise ConfigError(f"cannot continue run {planned.run_dir}: {blocked} is not writable "
                                  "(a read-only file system or its permissions); copy the run "
                                  "directory somewhere writable and resume from the copy")
            job = planned
            if resolve_device(job.cfg.trainer.device).type == "cpu":
                retain_freed_memory()  # process-wide: keep freed activations for reuse
            if elsewhere and writer:
                cleanup.close()
                cleanup.enter_context(RunLock(job.run_dir))  # first: a refused command logs nothing there
                redirect_log_files(run_dir, job.run_dir)
                remove_fresh(run_dir)  # this command's own directory is not used
            if job.finished:
                if writer:
                    record_run(job)
                log.info("run %s is already finished (%s epochs); nothing to do", job.run_dir,
                         read_metrics(job.run_dir).get("epochs_completed"))
                return read_metrics(job.run_dir).get(f"best_{job.cfg.trainer.monitor}")
            if writer and job.saved is not None:
                record_run(job)
            metrics = run(job, stop=stop)
            if writer:  # again: a refused second writer may have overwritten it meanwhile
                record_run(job)
        except RunInterrupted as interruption:
            where = job.run_dir if job else run_dir
            # a resumed run's new overrides again: its checkpoint may predate them (applying them
            # twice changes nothing)
            again = merge_overrides(list(hydra_cfg.overrides.task), []) if job and job.saved else []
            command = (f"python runner.py -m <the same sweep> trainer.resume=true "
                       f"{shlex.quote(f'hydra.sweep.dir={hydra_cfg.sweep.dir}')}" if sweeping
                       else " ".join(["python runner.py", resume_argument(where), *map(shlex.quote, again)]))
            message = f"{interruption}; resume with: {command}"
            log.warning("%s", message)
            if writer:
                try:
                    write_status(where, "interrupted", **identity(job.cfg if job else cfg,
                                                                  job.overrides if job else hydra_cfg),
                                 message=message)
                except OSError as error:  # e.g. the disk is full
                    log.error("cannot record the interruption in %s: %s", where, one_line(error))
            interruption.hand_over()  # e.g. submitit requeues the job (and ends the process)
            sys.exit(ExitStatus.INTERRUPTED)
        except USER_ERRORS as error:
            message = one_line(error)
            log.error("%s", message)
            where = job.run_dir if job else run_dir
            if writer and where.resolve() != run_dir.resolve():
                cleanup.close()
                remove_fresh(run_dir)  # this command's own directory, unused
            untouched = job is None and not is_fresh(run_dir)  # refused: a run there stays as it is
            if writer and (untouched or isinstance(error, RunDirectoryBusy)):
                restore_config_record(run_dir)
            elif writer:
                cleanup.close()
                if sweeping or not remove_fresh(where):
                    record_failure(job.cfg if job else cfg, job.overrides if job else hydra_cfg,
                                   where, message)
            if not sweeping:
                sys.exit(ExitStatus.FAILED)
            return None  # sys.exit here would end the whole sweep
        except Exception as error:
            if sweeping and writer:  # Hydra records it and runs the other jobs, then exits non-zero
                record_failure(job.cfg if job else cfg, job.overrides if job else hydra_cfg,
                               job.run_dir if job else run_dir, f"{type(error).__name__}: {error}")
            raise
    if metrics.get("summary_only"):
        if sweeping:
            write_status(job.run_dir, "finished", **metrics)
        elif is_fresh(job.run_dir):
            remove_fresh(job.run_dir)
        return None
    return metrics[f"best_{job.cfg.trainer.monitor}"]


def compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """The configuration Hydra composes from ``overrides`` (with its ``hydra`` node if asked)."""
    return hydra.compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)


def record_run(job: Plan) -> None:
    """record_config for the planned run, with its own config-group choices if it continues a
    run (this command's Hydra recorded the command's: its default model, not the run's)."""
    choices = None
    if job.source is not None:
        try:
            choices = OmegaConf.to_container(compose(job.overrides, hydra_config=True).hydra.runtime.choices)
        except Exception:  # noqa: BLE001  (options renamed since the run started: keep Hydra's record)
            choices = None
    record_config(job.run_dir, job.cfg, job.overrides, choices)


def identity(cfg: DictConfig, overrides: Any) -> dict[str, Any]:
    """What metrics.json records of every run, whatever its status: the experiment, the model
    (``model._target_``) and the run's overrides (a list, or Hydra's config of this command)."""
    if not isinstance(overrides, list):
        overrides = list(overrides.overrides.task)
    return {"name": OmegaConf.select(cfg, "name", default=None),
            "model": OmegaConf.select(cfg, "model._target_", default=None),
            "overrides": merge_overrides(list(overrides), [])}


def one_line(error: BaseException) -> str:
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return (f"cannot write or read{where}: {error.strerror or error}; the last good "
                "checkpoint is kept: free space or fix the permissions, then resume with "
                "trainer.resume=true")
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def restore_config_record(run_dir: Path) -> None:
    """Hydra has written this refused command's config into ``run_dir/.hydra``: put back the
    config of the run that is there (from its checkpoint)."""
    try:
        saved = checkpoint.load(RunFiles(run_dir).last)
        record_config(run_dir, OmegaConf.create(saved["config"]), list(saved["overrides"]))
    except (CheckpointError, KeyError, OSError):
        pass  # no (readable) checkpoint: the run there, if any, records its config when it ends


def record_failure(cfg: DictConfig, overrides: Any, run_dir: Path, message: str) -> None:
    """Mark a failed run in its metrics.json, so that reports list it with its error."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "failed", **identity(cfg, overrides), error=message)
    except OSError as error:  # e.g. the disk is still full
        log.error("cannot record the failure in %s: %s", run_dir, error.strerror or error)


