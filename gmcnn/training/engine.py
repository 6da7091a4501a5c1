"""The training engine: one run of one experiment, from a composed config to metrics.json.

    config -> validate -> model (+ summary) -> data -> [train epoch -> validate -> checkpoint]*
           -> best-validation weights -> test -> metrics.json, metrics.csv, curves.png

Every epoch ends with an atomic checkpoint of everything needed to continue bit-for-bit (model,
optimizer, scheduler, AMP scaler, RNG states, history); shuffling draws from a generator seeded
by (seed, epoch), so a resumed run on CPU reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gmcnn.nn import relaxation_penalty
from gmcnn.training import checkpoint, distributed
from gmcnn.training.config import ConfigError, instantiate, resolve_device, validate
from gmcnn.training.diagnostics import equivariance_metric, plot_relaxation
from gmcnn.training.memory import retain_freed_memory
from gmcnn.training.objectives import OBJECTIVES
from gmcnn.training.tracking import RunTracker, write_json

if TYPE_CHECKING:
    from dataset import Splits

log = logging.getLogger(__name__)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(model: nn.Module) -> str:
    """One line per leaf module with its parameter count, then the total."""
    rows = [(name, type(m).__name__, sum(p.numel() for p in m.parameters()))
            for name, m in model.named_modules()
            if name and (not list(m.children()) or list(m.parameters(recurse=False)))]
    width = max([len(name) for name, _, _ in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<16} {'params':>10}"]
    lines += [f"{name:<{width}}  {kind:<16} {count:>10,}" for name, kind, count in rows]
    lines.append(f"{'total':<{width}}  {'':<16} {count_parameters(model):>10,}")
    return "\n".join(lines)


def build_model(cfg: DictConfig) -> nn.Module:
    model = instantiate("model", cfg.model)
    expected = tuple(getattr(model, "image_shape", cfg.data.image_size))
    if expected != tuple(cfg.data.image_size):
        raise ConfigError(
            f"the group {list(cfg.model.group)} is laid out on {'x'.join(map(str, expected))} "
            f"images, but data {cfg.data.name} has {'x'.join(map(str, cfg.data.image_size))}; "
            "set symmetry.group to factors whose orders equal the image size (Cn has n pixels, "
            "Dn has 2n)")
    return model


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, cfg: DictConfig,
                device: torch.device) -> DataLoader:
    """Global batches drawn from a generator seeded by ``seed`` (this process's share of each
    under torchrun). Datasets that take a list of indices (tensor datasets, ``batch_indexable``
    ones) are indexed a whole batch at a time, much faster than collating single samples."""
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    if distributed.world_size() > 1:
        batches = distributed.ShardedBatches(batches)
    common = dict(num_workers=cfg.trainer.num_workers, pin_memory=device.type == "cuda")
    if cfg.trainer.num_workers > 0:  # also inside joblib/submitit workers, whose default fails
        common["multiprocessing_context"] = "fork"
    if isinstance(dataset, TensorDataset) or getattr(dataset, "batch_indexable", False):
        return DataLoader(dataset, sampler=batches, batch_size=None, **common)
    return DataLoader(dataset, batch_sampler=batches, **common)


# Samples per forward/backward chunk on CPU: fewer chunks amortise each chunk's fixed cost,
# smaller ones keep activations in cache (cifar10: 64 beat 16, 32, 128 and 256 on 2 cores)
CPU_MICRO_BATCH = 64


def resolve_micro_batch_size(setting: int | str | None, model: nn.Module,
                             device: torch.device) -> int | None:
    """``auto``: CPU_MICRO_BATCH on CPU unless the model has batch statistics (then chunks would
    change its gradient), else None (the whole batch at once)."""
    if setting != "auto":
        return setting
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return CPU_MICRO_BATCH if device.type == "cpu" and not has_batch_norm else None


class Trainer:
    """Holds the model, optimisation state and the epoch loops of one run."""

    def __init__(self, cfg: DictConfig, model: nn.Module, device: torch.device):
        self.cfg, self.model, self.device = cfg, model.to(device), device
        self.objective = OBJECTIVES[cfg.task]()
        # the forward pass used for training and evaluation; state is saved from self.model
        self.network = torch.compile(self.model) if cfg.trainer.compile else self.model
        self.optimizer = instantiate("optimizer", cfg.optimizer, model.parameters())
        has_scheduler = cfg.get("scheduler") and "_target_" in cfg.scheduler
        self.scheduler = instantiate("scheduler", cfg.scheduler, self.optimizer) if has_scheduler else None
        self.amp = bool(cfg.trainer.amp) and device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg.trainer.amp_dtype)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.penalty_weight = float(cfg.trainer.relaxation_penalty)
        if device.type == "cpu":
            retain_freed_memory()
        self.micro_batch_size = resolve_micro_batch_size(cfg.trainer.micro_batch_size, model,
                                                         device)

    def _batches(self, loader: DataLoader, desc: str):
        for inputs, targets in tqdm(loader, desc=desc, leave=False, disable=None):
            yield (inputs.to(self.device, non_blocking=True),
                   targets.to(self.device, non_blocking=True))

    def _micro_batches(self, inputs: Tensor, targets: Tensor):
        size = self.micro_batch_size or len(targets)
        return zip(inputs.split(size), targets.split(size))

    def train_step(self, inputs: Tensor, targets: Tensor) -> tuple[float, float]:
        """One optimizer step on a batch (this process's share of the global batch under
        torchrun), forward and backward in micro-batches; returns this share's summed loss and
        summed score. Raises TrainingDiverged, before the update, if the loss is not finite."""
        count = distributed.all_sum([len(targets)], self.device)[0]  # the global batch size
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, score_sum = 0.0, 0.0
        for chunk_inputs, chunk_targets in self._micro_batches(inputs, targets):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                outputs = self.objective.predict(self.network, chunk_inputs, chunk_targets)
                loss = self.objective.loss(outputs, chunk_targets) * len(chunk_targets)
            self.scaler.scale(loss / count).backward()
            loss_sum += loss.item()
            score_sum += self.objective.sample_scores(outputs.detach(), chunk_targets).sum().item()
        loss_value = distributed.all_sum([loss_sum], self.device)[0] / count
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"the training loss became {loss_value}")
        if self.penalty_weight:
            penalty = relaxation_penalty(self.model) / distributed.world_size()
            self.scaler.scale(self.penalty_weight * penalty).backward()
        distributed.sum_gradients(self.model)
        if self.cfg.trainer.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, score_sum

    def train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        self.model.train()
        total_loss, total_score, seen = 0.0, 0.0, 0
        for step, (inputs, targets) in enumerate(self._batches(loader, f"train {epoch}")):
            try:
                loss_sum, score_sum = self.train_step(inputs, targets)
            except TrainingDiverged as error:
                raise TrainingDiverged(f"{error} at epoch {epoch}, step {step}") from None
            total_loss += loss_sum
            total_score += score_sum
            seen += len(targets)
        total_loss, total_score, seen = distributed.all_sum([total_loss, total_score, seen],
                                                            self.device)
        score = self.objective.finish(total_score / seen)
        return {"train_loss": total_loss / seen, f"train_{self.objective.score}": score}

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, desc: str) -> dict[str, float]:
        """Mean loss and the score over ``loader`` (keys "loss" and the objective's score)."""
        self.model.eval()
        total_loss, total_score, seen = 0.0, 0.0, 0
        for batch in self._batches(loader, desc):
            for inputs, targets in self._micro_batches(*batch):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    outputs = self.objective.predict(self.network, inputs, targets)
                total_loss += self.objective.loss(outputs, targets).item() * len(targets)
                total_score += self.objective.sample_scores(outputs, targets).sum().item()
                seen += len(targets)
        total_loss, total_score, seen = distributed.all_sum([total_loss, total_score, seen],
                                                            self.device)
        return {"loss": total_loss / seen,
                self.objective.score: self.objective.finish(total_score / seen)}

    def step_scheduler(self, val_loss: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise checkpoint.CheckpointError(
                f"the checkpoint does not match this run's model or optimizer "
                f"({str(error).splitlines()[0]}); resume with the configuration it was written "
                "with, or start afresh with trainer.resume=false") from None


def load_data(cfg: DictConfig) -> Splits:
    """The dataset splits of ``cfg.data``; data problems become a ConfigError."""
    from dataset import DatasetError, build_dataset

    try:
        splits = build_dataset(cfg.data.name, cfg.data.root,
                               **OmegaConf.to_container(cfg.data.options, resolve=True))
    except DatasetError as error:
        raise ConfigError(str(error)) from None
    if tuple(splits.image_shape) != tuple(cfg.data.image_size):
        raise ConfigError(f"data {cfg.data.name} has images of {splits.image_shape}, but "
                          f"data.image_size says {list(cfg.data.image_size)}")
    return splits


def fresh_progress() -> dict[str, Any]:
    return {"epoch": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "history": [],
            "train_seconds": 0.0}


def resume(cfg: DictConfig, trainer: Trainer, tracker: RunTracker, ckpt_dir: Path,
           search_siblings: bool = True) -> dict[str, Any]:
    """Restore the trainer, RNGs and progress from the checkpoint ``trainer.resume`` selects."""
    resume_from = checkpoint.find_resume_checkpoint(cfg.trainer.resume, ckpt_dir.parent,
                                                     search_siblings)
    if resume_from is None:
        return fresh_progress()
    saved = checkpoint.load(resume_from)
    trainer.load_state_dict(saved["trainer"])
    checkpoint.set_rng_state(saved["rng"])
    tracker.restore(saved["progress"]["history"])
    if resume_from.parent != ckpt_dir and distributed.is_main():  # carry its best weights over
        checkpoint.save(ckpt_dir / "best.pt", checkpoint.load(resume_from.parent / "best.pt"))
    log.info("resumed from %s after epoch %d", resume_from, saved["progress"]["epoch"])
    return saved["progress"]


def fit(cfg: DictConfig, trainer: Trainer, tracker: RunTracker, splits: Splits,
        progress: dict[str, Any], ckpt_dir: Path) -> None:
    """Epochs from ``progress["epoch"] + 1``: train, validate, step the scheduler, keep the best
    weights (``trainer.monitor``), checkpoint everything, log; early stopping if configured.
    Under torchrun every rank computes the same numbers; rank 0 writes the files."""
    main = distributed.is_main()
    score = trainer.objective.score
    monitor, sign = cfg.trainer.monitor, (1 if trainer.objective.higher_is_better else -1)
    if monitor == "val_loss":
        sign = -1
    elif monitor != f"val_{score}":
        raise ConfigError(f"trainer.monitor={monitor} does not apply to {cfg.task}; use val_loss "
                          f"or val_{score}")
    patience = cfg.trainer.early_stopping_patience
    config = OmegaConf.to_container(cfg, resolve=True)
    valid_loader = make_loader(splits.valid, cfg.trainer.batch_size, False, 0, cfg, trainer.device)
    with logging_redirect_tqdm(), tqdm(
            range(progress["epoch"] + 1, cfg.trainer.epochs + 1), desc="epochs",
            initial=progress["epoch"], total=cfg.trainer.epochs, disable=None) as epochs:
        for epoch in epochs:
            if patience and progress["bad_epochs"] >= patience:
                log.info("early stopping: no improvement of %s for %d epochs", monitor, patience)
                break
            start = time.perf_counter()
            loader = make_loader(splits.train, cfg.trainer.batch_size, True,
                                 cfg.seed * 100_003 + epoch, cfg, trainer.device)
            row = {"epoch": epoch, **trainer.train_epoch(loader, epoch)}
            val = trainer.evaluate(valid_loader, f"valid {epoch}")
            row.update({"val_loss": val["loss"], f"val_{score}": val[score],
                        "lr": trainer.optimizer.param_groups[0]["lr"]})
            trainer.step_scheduler(val["loss"])
            progress["train_seconds"] += time.perf_counter() - start
            if progress["best"] is None or sign * (row[monitor] - progress["best"]) > 0:
                progress.update(best=row[monitor], best_epoch=epoch, bad_epochs=0)
                if main:
                    checkpoint.save(ckpt_dir / "best.pt",
                                    {"model": trainer.model.state_dict(), "epoch": epoch})
            else:
                progress["bad_epochs"] += 1
            progress["epoch"] = epoch
            progress["history"].append(row)
            if main:
                checkpoint.save(ckpt_dir / "last.pt", {"trainer": trainer.state_dict(),
                                                        "rng": checkpoint.rng_state(),
                                                        "progress": progress, "config": config})
            tracker.log_epoch(row)
            log.info("epoch %d/%d  train loss %.4g %s %.4g  val loss %.4g %s %.4g  (%.1fs)",
                     epoch, cfg.trainer.epochs, row["train_loss"], score, row[f"train_{score}"],
                     row["val_loss"], score, row[f"val_{score}"], time.perf_counter() - start)


def run(cfg: DictConfig, run_dir: Path, sweep_job: bool = False) -> dict[str, Any]:
    """Train, validate and test one experiment; returns the metrics written to metrics.json.
    ``sweep_job``: one job of a multirun, whose ``trainer.resume=true`` looks only at its own
    run directory (its siblings are other sweep points)."""
    validate(cfg)
    device = distributed.setup(resolve_device(cfg.trainer.device))
    try:
        return _run(cfg, distributed.broadcast(run_dir), device, sweep_job)
    finally:
        distributed.teardown()


def _run(cfg: DictConfig, run_dir: Path, device: torch.device, sweep_job: bool) -> dict[str, Any]:
    main = distributed.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.seed_everything(cfg.seed)
    model = build_model(cfg)
    num_params = count_parameters(model)
    log.info("model %s on %s\n%s", cfg.model._target_, device, model_summary(model))
    log.info("parameters: %s", f"{num_params:,}")
    if cfg.summary_only:
        metrics = {"num_params": num_params, "name": cfg.name}
        if main:
            write_json(run_dir / "metrics.json", metrics)
        return metrics

    splits = load_data(cfg)
    trainer = Trainer(cfg, model, device)
    ckpt_dir = run_dir / "checkpoints"
    tracker = RunTracker(run_dir, OmegaConf.to_container(cfg, resolve=True), cfg.logger.wandb,
                         cfg.name, enabled=main)
    try:
        progress = resume(cfg, trainer, tracker, ckpt_dir, search_siblings=not sweep_job)
        fit(cfg, trainer, tracker, splits, progress, ckpt_dir)
    except TrainingDiverged as error:
        tracker.close()
        last = ckpt_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no epoch completed"
        raise TrainingDiverged(f"{error}; {kept}. Lower optimizer.lr or set trainer.grad_clip "
                               "(e.g. 1.0), then resume with trainer.resume=true") from None
    except BaseException:
        tracker.close()
        raise

    distributed.barrier()  # rank 0 has written best.pt
    model.load_state_dict(checkpoint.load(ckpt_dir / "best.pt")["model"])
    metrics = {"name": cfg.name, "num_params": num_params, "best_epoch": progress["best_epoch"],
               f"best_{cfg.trainer.monitor}": progress["best"],
               "epochs_completed": progress["epoch"],
               "train_seconds": round(progress["train_seconds"], 3), "device": str(device)}
    metrics.update(test_metrics(cfg, trainer, splits))
    if main and plot_relaxation(model, run_dir / "relaxation.png"):
        log.info("symmetry-breaking maps of the relaxed layers: %s", run_dir / "relaxation.png")
    tracker.finish(metrics)
    log.info("test: %s (best epoch %s); outputs in %s",
             ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("test_")),
             progress["best_epoch"], run_dir)
    return metrics


def test_metrics(cfg: DictConfig, trainer: Trainer, splits: Splits) -> dict[str, float]:
    """Loss and score on every test set (``test_acc``; ``test_future_rmse``, ...), and the
    equivariance error of the model on the first test batch."""
    metrics: dict[str, float] = {}
    for name, dataset in splits.test_sets.items():
        loader = make_loader(dataset, cfg.trainer.batch_size, False, 0, cfg, trainer.device)
        prefix = "test" if name == "test" else f"test_{name}"
        result = trainer.evaluate(loader, name)
        metrics[f"{prefix}_loss"] = result["loss"]
        metrics[f"{prefix}_{trainer.objective.score}"] = result[trainer.objective.score]
    inputs = next(iter(make_loader(next(iter(splits.test_sets.values())), 8, False, 0, cfg,
                                   trainer.device)))[0].to(trainer.device)
    error = equivariance_metric(trainer.model, inputs)
    if error is not None:
        metrics["equivariance_error"] = error
    return metrics
