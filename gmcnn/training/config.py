"""Checking a composed run configuration and building its parts, with actionable errors.

Hydra already rejects overrides of unknown keys and unknown config-group options. This module
checks the values (enumerations, ranges), the keys of the instantiated groups (model, optimizer,
scheduler) against their constructors' signatures, and the model against the data, and turns
every problem into a :class:`ConfigError` whose message names the key and what is allowed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gmcnn.training import targets
from gmcnn.training.objectives import MONITORS, OBJECTIVES


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and what is allowed."""


CHOICES = {
    "task": tuple(OBJECTIVES),
    "trainer.device": None,  # checked by resolve_device
    "trainer.amp_dtype": ("float16", "bfloat16"),
    "trainer.monitor": MONITORS,
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
}
TRAINER_KEYS = {"epochs", "batch_size", "device", "amp", "amp_dtype", "grad_clip",
                "early_stopping_patience", "monitor", "relaxation_penalty", "resume", "num_workers",
                "compile", "micro_batch_size", "bn_recalibration", "early_stopping_window",
                "early_stopping_after", "memory_check", "profile"}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value in ``cfg`` (before any data is loaded or
    anything named in it is imported: :mod:`gmcnn.training.targets`)."""
    try:
        targets.check_targets(OmegaConf.to_container(cfg, resolve=False))
    except targets.TargetRefused as refused:
        raise ConfigError(str(refused)) from None
    check_model_task(cfg)
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"config cannot be resolved: {error}".splitlines()[0]) from None
    unknown = set(cfg.trainer) - TRAINER_KEYS
    if unknown:
        raise ConfigError(f"unknown key trainer.{sorted(unknown)[0]}; allowed: "
                          f"{', '.join(sorted(TRAINER_KEYS))}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed must be an integer, got {cfg.seed!r}")
    t = cfg.trainer
    monitor_sign(cfg)
    _positive_int("trainer.epochs", t.epochs)
    _positive_int("trainer.batch_size", t.batch_size)
    _non_negative_int("trainer.num_workers", t.num_workers)
    _non_negative_int("trainer.bn_recalibration", t.get("bn_recalibration", 0))
    if cfg.data.get("max_samples") is not None:
        _positive_int("data.max_samples (or null)", cfg.data.max_samples)
    if t.early_stopping_patience is not None:
        _positive_int("trainer.early_stopping_patience", t.early_stopping_patience)
    if t.get("early_stopping_window") is not None:
        _positive_int("trainer.early_stopping_window (or null)", t.early_stopping_window)
    _non_negative_int("trainer.early_stopping_after", t.get("early_stopping_after", 0))
    if t.grad_clip is not None and not t.grad_clip > 0:
        raise ConfigError(f"trainer.grad_clip must be > 0 or null, got {t.grad_clip}")
    micro = t.micro_batch_size
    if micro not in ("auto", None):
        _positive_int("trainer.micro_batch_size (or auto, or null)", micro)
    for key in ("compile", "memory_check", "profile"):
        if not isinstance(t.get(key, False), bool):
            raise ConfigError(f"trainer.{key} must be true or false, got {t.get(key)!r}")
    if not t.relaxation_penalty >= 0:
        raise ConfigError(f"trainer.relaxation_penalty must be >= 0, got {t.relaxation_penalty}")
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if lr is None or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"optimizer.lr must be a number > 0, got {lr!r}")
    resolve_device(t.device)


def check_model_task(cfg: DictConfig) -> None:
    """ConfigError if ``model._target_`` is a project model that declares another task than
    ``cfg.task`` (the message lists the models of the task, from the classes' own ``task``)."""
    exported = targets.models()
    model_task = getattr(exported.get(OmegaConf.select(cfg, "model._target_", default=None)), "task", None)
    if cfg.get("task") in OBJECTIVES and model_task not in (None, cfg.task):
        fitting = sorted(path.rpartition(".")[2] for path, cls in exported.items() if cls.task == cfg.task)
        raise ConfigError(f"model {cfg.model._target_} is a {model_task} model, but task={cfg.task} "
                          f"(experiment {cfg.get('name')}); choose a model config (model=NAME) whose _target_ "
                          f"is a {cfg.task} model of gmcnn.models: {', '.join(fitting)}")


def monitor_sign(cfg: DictConfig) -> int:
    """+1 if a larger ``trainer.monitor`` is better, -1 if smaller; ConfigError if the monitored
    value does not exist for ``cfg.task``."""
    objective = OBJECTIVES[cfg.task]
    monitor, score = cfg.trainer.monitor, objective.score
    if monitor == "val_loss":
        return -1
    if monitor != f"val_{score}":
        raise ConfigError(f"trainer.monitor={monitor} does not apply to task={cfg.task}; use "
                          f"val_loss or val_{score}")
    return 1 if objective.higher_is_better else -1


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")


def _non_negative_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device={name!r} is not a device; use auto, cpu, cuda or "
                          "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is available; use "
                          "trainer.device=cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"trainer.device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def instantiate(group: str, node: DictConfig, *args: Any) -> Any:
    """Call ``node._target_(*args, **keys)`` (``_partial_`` configs receive ``args`` now, e.g. the
    parameters of an optimizer); a bad target or an unknown key is a ConfigError naming
    ``group.key`` and the allowed keys."""
    try:
        target = targets.resolve(group, node._target_)
    except targets.TargetRefused as refused:
        raise ConfigError(str(refused)) from None
    params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
              if not k.startswith("_")}
    allowed = _parameters(target)
    unknown = sorted(set(params) - allowed) if allowed is not None else []
    if unknown:
        raise ConfigError(f"unknown key {group}.{unknown[0]} for {node._target_}; allowed: "
                          f"{', '.join(sorted(allowed))}")
    return _call(group, target, *args, **params)


def _call(group: str, target: Callable, /, *args: Any, **kwargs: Any) -> Any:
    try:
        return target(*args, **kwargs)
    except ValueError as error:  # the library's argument checks say what is allowed
        raise ConfigError(f"{group}: {error}") from None


def _parameters(target: Callable) -> set[str] | None:
    """Keyword names ``target`` accepts (None if it takes **kwargs)."""
    signature = inspect.signature(target)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return {name for name, p in signature.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
