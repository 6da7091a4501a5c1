"""The command-line front end of ``python runner.py``: checks the command line before Hydra
runs, gives every sweep job its share of the CPU, and ends a sweep with a summary and an exit
status.

:func:`main` (``sys.exit(gmcnn.cli.in_process(task, config_dir, sys.argv))``; :func:`in_process` runs
it in this process, as ``runner.run`` does for the tests, and puts back what it changed):

1. :func:`preflight` composes the configuration from the same overrides with Hydra's compose API
   and turns what a user mistypes into one line with the closest valid names (difflib): an
   unknown config-group option (``exp=cifar1``), an unknown key (``trainer.epoch=1``), a key added
   with ``+`` that nothing reads (``+no_such_key=1``; ``model``, ``optimizer``, ``scheduler`` and
   ``data.options`` keys are checked against their constructors when the run starts, ``hydra.*``
   by Hydra's schema), a launcher or sweeper whose plugin is not installed (names the pip extra),
   an Optuna direction that does not match ``trainer.monitor``, an Optuna storage with a
   SQLAlchemy that optuna 2 cannot use, an output directory that cannot be created (read-only,
   unwritable: before Hydra creates it). Flags (``--help``, ``--cfg``,
   ``-m``, ...) pass through unchanged.
2. the task (``runner.main``, decorated by ``hydra.main``) runs.
3. after a multirun, :func:`summarise` logs one row per job of this sweep (overrides, status,
   best monitored metric, run directory), writes it to ``<sweep dir>/summary.md``, writes the
   comparison over seeds (``comparison.md``: mean ± std per model and setting, gmcnn.report; logged
   too when seeds repeated a setting) and picks the exit status: 0 every job finished, 1 a job
   failed or crashed (or the command line is bad), 3 interrupted (the sweep or a job; resume with
   ``trainer.resume=true``).

:class:`SweepCallback` (``hydra.callbacks`` in configs/config.yaml) marks the sweep's start
(``<sweep dir>/.sweep_start``: jobs whose ``.hydra/`` is older belong to an earlier sweep into the
same folder) and, in every job of the joblib launcher, sets torch's threads to
max(1, cores // n_jobs) and OMP/MKL threads for the job's own subprocesses.

:func:`config_groups` is ``--help``'s list of the options a user can choose (the resolver
``${gmcnn.config_groups:}``, registered on import): options whose name starts with "_" are shared
bases of other options (exp/_dynamics), listed nowhere and refused on the command line.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("gmcnn.cli")


class ExitStatus(IntEnum):
    """The exit status of ``python runner.py`` (and of one run's command, gmcnn.training.command)."""

    OK = 0
    FAILED = 1       # a failed job or run, or a bad command line
    INTERRUPTED = 3  # resumable: the same command with trainer.resume=true


OK, FAILED, INTERRUPTED = ExitStatus

MARKER = ".sweep_start"
GOOD = {"finished", "summary"}

# config option -> the plugin (module under hydra_plugins) it needs; CLUSTER installs them all
CLUSTER = 'pip install -e ".[cluster]"'
PLUGINS = {
    ("hydra/launcher", "parallel"): "hydra_joblib_launcher",
    ("hydra/launcher", "joblib"): "hydra_joblib_launcher",
    ("hydra/launcher", "slurm"): "hydra_submitit_launcher",
    ("hydra/launcher", "slurm_local"): "hydra_submitit_launcher",
    ("hydra/launcher", "submitit_local"): "hydra_submitit_launcher",
    ("hydra/launcher", "submitit_slurm"): "hydra_submitit_launcher",
    ("hydra/sweeper", "optuna"): "hydra_optuna_sweeper",
    ("hparams_search", None): "hydra_optuna_sweeper",  # every search runs on the Optuna sweeper
}
# keys a + override may add because their reader checks them when the run starts
CHECKED_LATER = ("model.", "optimizer.", "scheduler.", "data.options.", "hydra.")
# flags whose command Hydra runs as it is (help, completion): they train nothing
PASS_THROUGH = ("help", "hydra_help", "info", "shell_completion")
RERUN_REFUSED = ("--experimental-rerun is refused: it unpickles RUN_DIR/.hydra/config.pickle, and a "
                 "pickle from elsewhere can run code; continue the run with trainer.resume=RUN_DIR, or "
                 "repeat it with the overrides listed in RUN_DIR/.hydra/overrides.yaml")
# what the hydra node of a config may instantiate (its launcher and sweeper are Hydra's plugins,
# which Hydra itself restricts to hydra_plugins.*): the project's callback, logging's own classes
HYDRA_CALLBACKS = ("gmcnn.cli.SweepCallback",)
# environment variables a config's hydra.job.env_set may not set: they make later processes
# (launcher workers, torchrun, data-loading subprocesses) load code
# a launcher's keys that run shell commands (setup lines) or pass options to sbatch / srun (which
# can name scripts to run): accepted only when typed on the command line
SHELL_KEYS = ("hydra.launcher.setup", "hydra.launcher.srun_args", "hydra.launcher.additional_parameters")
UNSAFE_ENV = ("LD_", "DYLD_", "PYTHON", "BASH_ENV", "ENV", "PATH", "PERL5", "RUBYOPT", "NODE_OPTIONS",
              "GMCNN_TRUSTED_TARGETS")


class CommandLineError(Exception):
    """A mistake on the command line; the message is one line saying what to do."""


# --- 1. the command line, checked before Hydra runs ---------------------------------------------

def preflight(argv: list[str], config_dir: Path) -> None:
    """Raise CommandLineError for the first mistake in ``argv`` (runner.py's arguments)."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # a malformed flag: Hydra's argparse says so
    if args.experimental_rerun:
        raise CommandLineError(RERUN_REFUSED)
    if any(getattr(args, flag, None) for flag in PASS_THROUGH):
        return
    if args.config_path:
        config_dir = Path(args.config_path) if Path(args.config_path).is_absolute() \
            else Path.cwd() / args.config_path
    extra_dir = Path(args.config_dir).resolve() if args.config_dir else None
    if extra_dir is not None and not extra_dir.is_dir():
        raise CommandLineError(f"--config-dir {args.config_dir}: no such directory")
    cfg = _check_overrides(args.overrides, config_dir, args.config_name or "config", extra_dir)
    _check_output_dir(cfg, bool(args.multirun))


def _check_output_dir(cfg: DictConfig, multirun: bool) -> None:
    """The directory Hydra is about to create (``hydra.run.dir``, or ``hydra.sweep.dir`` for -m)
    must be creatable; records which of its ancestors exist (gmcnn.training.rundir)."""
    from gmcnn.training.rundir import record_existing, unwritable

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        target = Path(str(OmegaConf.select(cfg, key)))
    except Exception:  # noqa: BLE001  (an interpolation only Hydra's job can resolve: Hydra checks)
        return
    blocked = unwritable(target)
    if blocked is not None:
        options = "paths.multirun_dir=DIR (or hydra.sweep.dir=DIR)" if multirun else \
            "paths.output_dir=DIR (or hydra.run.dir=DIR)"
        raise CommandLineError(f"cannot create the output directory {target}: {blocked} is not writable "
                               f"(a read-only file system or its permissions); choose another with {options}")
    record_existing(target)


def _check_overrides(overrides: list[str], config_dir: Path, config_name: str,
                     extra_dir: Path | None = None) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as error:
            raise CommandLineError(f"cannot parse the override {text}: {_first_line(error)}") from None
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        if extra_dir is not None:  # where Hydra puts --config-dir: after the main configs
            _add_config_dir(loader, extra_dir)
        is_group = _group_lookup(loader)
        chosen, keyed = [], []
        for override in parsed:
            values = _values(override)
            if is_group(override.key_or_group) and values:
                for value in values:
                    _check_choice(loader, override.key_or_group, value)
                chosen.append(_first(override, values))  # a group sweep's first option
            else:
                keyed.append((override, values))
        compose_with = lambda extra: compose(config_name=config_name, overrides=chosen + extra,
                                             return_hydra_config=True)
        try:
            cfg = compose_with([_first(o, v) for o, v in keyed if v or o.is_delete()])
            error = None
        except Exception as problem:  # noqa: BLE001  (Hydra's composition errors, made one line)
            error = CommandLineError(_first_line(problem))
        added = [o for o, _ in keyed if (o.is_add() or o.is_force_add()) and not _read_later(o, overrides)]
        if error is not None or added:  # what is wrong, with the closest names: against the config
            try:  # composed without the key overrides
                base = compose_with([])
            except Exception as problem:  # noqa: BLE001
                raise CommandLineError(_first_line(problem)) from None
            for override, _ in keyed:
                _check_key(base, override, overrides)
        if error is not None:
            raise error
    _check_direction(cfg)
    _check_storage(cfg)
    check_instantiated(cfg, overrides)
    return cfg


def _add_config_dir(loader: Any, directory: Path) -> None:
    from hydra._internal.config_repository import ConfigRepository
    from hydra.core.config_search_path import SearchPathQuery

    loader.config_search_path.prepend(provider="command-line", path=f"file://{directory}",
                                      anchor=SearchPathQuery(provider="schema"))
    loader.repository = ConfigRepository(config_search_path=loader.config_search_path)


def check_instantiated(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """CommandLineError for anything in a composed config (with its ``hydra`` node) that would
    make Hydra or the run import code the project does not trust: a model / optimizer / scheduler
    target off the allow-list (:mod:`gmcnn.training.targets`), a ``_target_`` elsewhere, a Hydra
    callback other than the project's, a logging factory or handler class outside ``logging``, an
    environment variable that loads code, a launcher's shell lines or scheduler options
    (:data:`SHELL_KEYS`) that the command line (``overrides``) did not give. A received config
    directory is data; this keeps it so."""
    from gmcnn.report import override_key
    from gmcnn.training import targets

    hydra_node = OmegaConf.to_container(cfg.get("hydra") or {}, resolve=False)
    task = OmegaConf.to_container(cfg, resolve=False)
    task.pop("hydra", None)
    try:
        targets.check_targets(task)
    except targets.TargetRefused as refused:
        raise CommandLineError(str(refused)) from None
    trusted = targets.trusted_by_user()
    for name, callback in (hydra_node.get("callbacks") or {}).items():
        target = (callback or {}).get("_target_")
        if target not in HYDRA_CALLBACKS and target not in trusted:
            raise CommandLineError(f"hydra.callbacks.{name}._target_={target!r} is refused: only "
                                   f"{', '.join(HYDRA_CALLBACKS)} may run as a callback; nothing was "
                                   f"imported. Trust your own with {targets.TRUSTED_ENV}")
    for part in ("launcher", "sweeper"):
        target = str((hydra_node.get(part) or {}).get("_target_", ""))
        if not target.startswith(("hydra_plugins.", "hydra._internal.core_plugins.")):
            raise CommandLineError(f"hydra.{part}._target_={target!r} is refused: a {part} must be a "
                                   "Hydra plugin (hydra_plugins.*)")
    for part in ("job_logging", "hydra_logging"):
        for key, value in _leaves(hydra_node.get(part) or {}, f"hydra.{part}."):
            leaf = key.rpartition(".")[2]
            if leaf == "()" or (leaf == "class" and not str(value).startswith("logging.")):
                raise CommandLineError(f"{key}={value!r} is refused: logging may only use the classes "
                                       "of Python's logging package")
    typed = {override_key(override) for override in overrides}
    for key in SHELL_KEYS:
        if OmegaConf.select(cfg, key, default=None) and not any(t == key or t.startswith(f"{key}.") for t in typed):
            raise CommandLineError(f"{key} is refused from a config file: it runs shell commands or "
                                   f"passes scheduler options; give it on the command line ({key}=...)")
    for name in (OmegaConf.select(cfg, "hydra.job.env_set") or {}):
        if str(name).upper().startswith(UNSAFE_ENV):
            raise CommandLineError(f"hydra.job.env_set.{name} is refused: a config may not set an "
                                   "environment variable that makes processes load code")


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _group_lookup(loader: Any) -> Callable[[str], bool]:
    """Whether a name is a config group (``exp``, ``hydra/launcher``); keys with dots never are."""
    known: dict[str, set[str]] = {}

    def is_group(name: str) -> bool:
        if "." in name:
            return False
        parent, _, leaf = name.rpartition("/")
        if parent not in known:
            known[parent] = set(loader.list_groups(parent))
        return leaf in known[parent]

    return is_group


def _read_later(override: Any, overrides: list[str]) -> bool:
    """A new key's reader checks it when the run starts, or another override interpolates it."""
    key = override.key_or_group
    return key.startswith(CHECKED_LATER) or any("${" + key in other for other in overrides)


def _values(override: Any) -> list[str]:
    """The values a (sweep) override takes, as override strings; [] for ranges a sweeper samples
    (``interval(...)``)."""
    if override.is_delete():
        return []
    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    try:
        return list(override.sweep_string_iterator())
    except Exception:  # noqa: BLE001  (interval sweeps have no values to list)
        return []


def _first(override: Any, values: list[str]) -> str:
    """The override with its first value (a sweep's first point)."""
    if override.is_delete() or not override.is_sweep_override():
        return override.input_line
    return f"{override.get_key_element()}={values[0]}"


def _check_choice(loader: Any, group: str, value: str) -> None:
    if value == "null":  # no option (e.g. hparams_search=null)
        return
    module = PLUGINS.get((group, value), PLUGINS.get((group, None)))
    if module and not plugin_installed(module):
        package = module.replace("_", "-")
        raise CommandLineError(f"{group}={value} needs the {package} plugin, which is not installed: "
                               f"{CLUSTER}")
    options = selectable_options(loader, group)
    if value not in options:
        raise CommandLineError(f"unknown {group} {value!r}{_closest(value, options)}; choose one of: "
                               f"{', '.join(options)}")


def plugin_installed(module: str) -> bool:
    """Whether Hydra's plugin ``hydra_plugins.<module>`` can be imported; without any plugin the
    namespace package ``hydra_plugins`` itself is missing (find_spec then raises, not None)."""
    try:
        return importlib.util.find_spec(f"hydra_plugins.{module}") is not None
    except ModuleNotFoundError:
        return False


def selectable_options(loader: Any, group: str) -> list[str]:
    """The options of ``group`` a user can choose (``loader``: Hydra's config loader or
    repository): not those whose name starts with "_", the shared bases of other options
    (exp/_dynamics)."""
    return [o for o in loader.get_group_options(group) if not o.rpartition("/")[2].startswith("_")]


def config_groups() -> str:
    """``--help``'s list of config groups, one ``group: option, ...`` line each (Hydra's
    $APP_CONFIG_GROUPS without the shared bases); the resolver ``${gmcnn.config_groups:}`` of
    configs/hydra/help/gmcnn.yaml. Hydra resolves it whenever it merges the help config, in every
    command, so it lists from one copy of the config repository (what the loader's
    ``get_group_options`` makes anew on each of its ~50 calls: 0.5 s of every command)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    hydra = GlobalHydra.instance().hydra
    try:  # a private helper of Hydra 1.3's loader; without it, the public (slower) listing
        _, repository = hydra.config_loader._parse_overrides_and_create_caching_repo(None, [])
    except (AttributeError, TypeError):
        repository = None

    def groups(parent: str) -> Iterator[str]:  # Hydra's list_all_config_groups, on the one copy
        for child in repository.get_group_options(parent, ObjectType.GROUP):
            group = f"{parent}/{child}" if parent else child
            if repository.get_group_options(group, ObjectType.CONFIG):
                yield group
            yield from groups(group)

    names, source = ((hydra.list_all_config_groups(), hydra.config_loader) if repository is None
                     else (groups(""), repository))
    chosen = sorted(g for g in names if g.partition("/")[0] != "hydra")
    return "\n".join(f"{g}: {', '.join(sorted(selectable_options(source, g)))}" for g in chosen)


OmegaConf.register_new_resolver("gmcnn.config_groups", config_groups, replace=True)


def _check_key(base: DictConfig, override: Any, overrides: list[str]) -> None:
    key = override.key_or_group
    exists = _has_key(base, key)
    if override.is_delete() or (exists and not override.is_add()):
        return
    if exists:  # +key for a key that is there
        raise CommandLineError(f"{override.input_line}: {key} already exists; set it without the +: "
                               f"{override.input_line.lstrip('+')}")
    parent, _, leaf = key.rpartition(".")
    if parent and _has_key(base, parent):  # compare with its siblings' names
        near = _closest(leaf, [p.rpartition(".")[2] for p in _paths(base) if p.rpartition(".")[0] == parent],
                        prefix=f"{parent}.")
    else:
        near = _closest(key, [p for p in _paths(base) if key.startswith("hydra.") == p.startswith("hydra.")])
    if not (override.is_add() or override.is_force_add()):
        raise CommandLineError(f"unknown key {key}{near}")
    if not _read_later(override, overrides):
        raise CommandLineError(f"{override.input_line}: nothing reads {key}{near}; "
                               "remove it (only model.*, optimizer.*, scheduler.* and data.options.* "
                               "take new keys)")


def _has_key(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def _paths(node: DictConfig, prefix: str = "") -> Iterator[str]:
    for key in node.keys():
        path = f"{prefix}{key}"
        yield path
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _paths(child, f"{path}.")


def _closest(word: str, candidates: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f" (closest: {', '.join(prefix + c for c in close)})" if close else ""


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _check_direction(cfg: DictConfig) -> None:
    """An Optuna search must optimise trainer.monitor the right way round."""
    sweeper = OmegaConf.select(cfg, "hydra.sweeper")
    if sweeper is None or "optuna" not in str(sweeper.get("_target_", "")):
        return
    monitor = cfg.trainer.monitor
    from gmcnn.training.objectives import MAXIMIZED

    wanted = "maximize" if monitor in MAXIMIZED else "minimize"
    direction = str(sweeper.get("direction")).rsplit(".", 1)[-1]
    if direction != wanted:
        raise CommandLineError(f"hydra.sweeper.direction={direction} but trainer.monitor={monitor} "
                               f"is to {wanted}; set hydra.sweeper.direction={wanted}")


def _check_storage(cfg: DictConfig) -> None:
    """An Optuna storage needs SQLAlchemy < 2 with optuna 2 (the sweeper's optuna < 3): with
    SQLAlchemy 2 it stops with an AssertionError when it opens the database."""
    storage = OmegaConf.select(cfg, "hydra.sweeper.storage", default=None)
    if not storage:
        return
    try:
        optuna, sqlalchemy = metadata.version("optuna"), metadata.version("sqlalchemy")
    except metadata.PackageNotFoundError:
        return  # no Optuna sweeper: the plugin check has said so
    if int(optuna.split(".")[0]) < 3 and int(sqlalchemy.split(".")[0]) >= 2:
        raise CommandLineError(f"hydra.sweeper.storage={storage} needs SQLAlchemy < 2 with optuna {optuna} "
                               f'(installed: SQLAlchemy {sqlalchemy}): pip install "sqlalchemy>=1.4,<2"')


# --- 2. sweep jobs: threads per job, start marker -----------------------------------------------

def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(n_jobs: int, cores: int) -> int:
    """Torch threads for each of ``n_jobs`` parallel jobs (joblib's negative n_jobs: cores + 1 +
    n_jobs at a time) on ``cores`` cores."""
    running = n_jobs if n_jobs > 0 else cores + 1 + n_jobs
    return max(1, cores // max(1, running))


_sweep_dir: Path | None = None  # set in the process that runs the sweep


class SweepCallback(Callback):
    """Hydra callback: marks the sweep's start; splits the cores between parallel jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)  # as given: relative to the working directory
        _sweep_dir.mkdir(parents=True, exist_ok=True)
        (_sweep_dir / MARKER).write_text("")  # its mtime comes from the same clock as the jobs'

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = OmegaConf.select(config, "hydra.launcher")
        if launcher is None or "JoblibLauncher" not in str(launcher.get("_target_", "")):
            return
        import torch

        threads = threads_per_job(int(launcher.n_jobs), available_cores())
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = str(threads)
        torch.set_num_threads(threads)
        logging.getLogger("gmcnn").info("torch threads: %d (%d cores / %s parallel jobs)",
                                        torch.get_num_threads(), available_cores(), launcher.n_jobs)


# --- 3. the end of a sweep: summary and exit status ---------------------------------------------

def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories of the sweep that last started in ``sweep_dir``."""
    from gmcnn.report import find_jobs
    from gmcnn.training.rundir import RunFiles

    marker = sweep_dir / MARKER
    since = marker.stat().st_mtime_ns if marker.is_file() else 0
    return [job for job in find_jobs(sweep_dir)
            if RunFiles(job).overrides.stat().st_mtime_ns >= since]


def summarise(sweep_dir: Path, interrupted: bool = False) -> int:
    """Log and write the sweep's summary table; the exit status it calls for."""
    from gmcnn.report import collect, summary_table, write_comparison

    rows = collect(sweep_dir, sweep_jobs(sweep_dir), missing="crashed")
    table = summary_table(rows, sweep_dir)
    compared: list[str] = []
    try:
        (sweep_dir / "summary.md").write_text("\n".join(table) + "\n")
        compared = write_comparison(rows, sweep_dir)
    except OSError as error:
        log.warning("could not write the summary to %s: %s", sweep_dir, error)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    log.info("\n".join(table))
    if compared and len(compared) - 2 < len(rows):  # fewer settings than jobs: seeds repeated one
        log.info("mean ± std over seeds (%s):\n%s", sweep_dir / "comparison.md", "\n".join(compared))
    log.info("%d jobs (%s) in %s", len(rows), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             sweep_dir)
    if interrupted or "interrupted" in counts:
        log.error("the sweep was interrupted; run the same command with trainer.resume=true and "
                  "hydra.sweep.dir=%s to finish it", sweep_dir)
        return INTERRUPTED
    if set(counts) - GOOD or not rows:
        return FAILED
    return OK


@contextlib.contextmanager
def _console() -> Iterator[None]:
    """This module's messages, while a command runs, to its standard error (``sys.stderr`` as it
    starts), not into a job's log file; as before afterwards."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def main(task: Callable[[], Any], config_dir: Path, argv: list[str] | None = None) -> int:
    """Check the command line, run ``task`` (a ``hydra.main`` function), summarise a sweep;
    the process's exit status."""
    with _console():
        return _command(task, config_dir, sys.argv[1:] if argv is None else argv)


def _command(task: Callable[[], Any], config_dir: Path, argv: list[str]) -> int:
    global _sweep_dir
    _sweep_dir = None
    try:
        preflight(argv, config_dir)
    except CommandLineError as error:
        log.error("error: %s", error)
        return FAILED
    interrupted = False
    try:
        task()
        status = OK
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else (OK if exit_.code is None else FAILED)
    except KeyboardInterrupt:
        interrupted, status = True, INTERRUPTED
    if _sweep_dir is None:
        return status
    verdict = summarise(_sweep_dir, interrupted)
    return INTERRUPTED if INTERRUPTED in (status, verdict) else max(verdict, min(status, FAILED))


def in_process(task: Callable[[], Any], config_dir: Path, argv: list[str],
               cwd: str | os.PathLike[str] | None = None) -> int:
    """``python ARGV`` (``argv[0]``: the script that defines ``task``), from ``cwd``, in this
    process: :func:`main` with ``sys.argv`` set for Hydra's parser; its exit status. What a command
    changes in the process is put back afterwards (``sys.argv``, the working directory, Hydra's
    global state, every logger's handlers, level and propagation, the handlers it added closed:
    its log file), so that commands run one after another in one process (the tests, through
    ``runner.run``) each start as ``python runner.py`` does and leave nothing open."""
    from hydra.core.global_hydra import GlobalHydra

    saved_argv, saved_cwd, saved_loggers = sys.argv, os.getcwd(), _logger_state()
    try:
        GlobalHydra.instance().clear()
        sys.argv = list(argv)
        if cwd is not None:
            os.chdir(cwd)
        return main(task, config_dir, sys.argv[1:])
    finally:
        GlobalHydra.instance().clear()
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        _restore_loggers(saved_loggers)


LoggerState = dict[logging.Logger, tuple[list[logging.Handler], int, bool, bool]]


def _logger_state() -> LoggerState:
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return {logger: (list(logger.handlers), logger.level, logger.propagate, logger.disabled) for logger in loggers}


def _restore_loggers(saved: LoggerState) -> None:
    """Every logger as in ``saved`` (a logger made since: as made, without handlers); the handlers
    added since are closed."""
    kept = {handler for handlers, *_ in saved.values() for handler in handlers}
    for logger in _logger_state():
        handlers, level, propagate, disabled = saved.get(logger, ([], logging.NOTSET, True, False))
        for handler in logger.handlers:
            if handler not in kept:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


__all__ = ["CommandLineError", "SweepCallback", "config_groups", "in_process", "main", "preflight",
           "selectable_options", "summarise", "threads_per_job"]
