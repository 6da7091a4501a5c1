"""The training engine: one run of one experiment, from a planned config to metrics.json.

    plan (resume.py: a checked config) -> model (build.py) -> data (data.py) -> memory check
        (memory.py) -> restore the checkpoint (resume.py) -> [train epoch (steps) -> validate -> checkpoint]*
        -> best-validation weights -> test -> metrics.json, metrics.csv, curves.png
        (relaxation.png, rollout_rmse.png)

One training step (:meth:`Trainer.train_step`): forward and loss per micro-batch, backward, the
gradients summed over micro-batches and (torchrun) processes, clipping, the optimizer update.
Every epoch ends with a checkpoint of everything needed to continue bit-for-bit (checkpoint.py);
a stop signal (signals.py) ends the run after the current step with a mid-epoch checkpoint
(during an epoch's validation: after its checkpoint), and at once before training (model, data:
nothing to save) and in the final test (the last checkpoint holds the whole training); an
out-of-memory error ends it with one line (memory.OutOfMemory) and the last checkpoint kept.
Shuffling draws from a generator seeded by (seed, epoch), so a resumed run on CPU reproduces the
uninterrupted one exactly. Before every evaluation the running statistics of batch-norm layers are
recomputed from a fixed set of ``trainer.bn_recalibration`` training samples (precise_bn.py), so that
best.pt holds the statistics its validation and test metrics were computed with.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gmcnn.nn import relaxation_penalty
from gmcnn.training import checkpoint, distributed, memory, precise_bn
from gmcnn.training.build import build_model, count_parameters, model_summary
from gmcnn.training.checkpoint import Progress
from gmcnn.training.config import instantiate, monitor_sign, resolve_device
from gmcnn.training.data import fixed_subset, load_data, make_loader
from gmcnn.training.diagnostics import equivariance_metric, plot_relaxation, plot_step_scores
from gmcnn.training.objectives import OBJECTIVES
from gmcnn.training.profiling import TRAIN_LOOP, TRAIN_STEPS, PhaseTimes
from gmcnn.training.resume import Plan, merge_overrides, restore, resume_argument
from gmcnn.training.rundir import RunFiles
from gmcnn.training.signals import StopSignals
from gmcnn.training.tracking import RunTracker

if TYPE_CHECKING:
    from dataset import Splits

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingDiverged", "build_model", "run"]


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


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
        self.micro_batch_size = resolve_micro_batch_size(cfg.trainer.micro_batch_size, model, device)
        self.bn_recalibration = cfg.trainer.get("bn_recalibration", 0)  # absent in older runs' configs
        self.recalibrated = False
        self.times = PhaseTimes(cfg.trainer.get("profile", False), device)   # trainer.profile

    def _batches(self, loader: DataLoader, desc: str):
        for inputs, targets in tqdm(loader, desc=desc, leave=False, disable=None):
            yield (inputs.to(self.device, non_blocking=True),
                   targets.to(self.device, non_blocking=True))

    def _micro_batches(self, inputs: Tensor, targets: Tensor):
        size = self.micro_batch_size or len(targets)
        return zip(inputs.split(size), targets.split(size))

    def forward_loss(self, network: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs of ``network`` (self.network, or self.model uncompiled) on a micro-batch and
        its summed loss, under autocast if trainer.amp applies."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.objective.predict(network, inputs, targets)
            return outputs, self.objective.loss(outputs, targets) * len(targets)

    def check_memory(self, train: Dataset) -> None:
        """Refuse (memory.OutOfMemory, one line) a step that needs more memory than the device
        has: the activations measured on the first three samples of ``train`` (memory.py)."""
        available = memory.available_memory(self.device)  # before the probe allocates anything
        inputs, targets = default_collate([train[index] for index in range(min(3, len(train)))])
        share = -(-self.cfg.trainer.batch_size // distributed.world_size())  # this process's part of a batch
        batch = min(share, len(train))
        step = memory.measure_step_memory(
            self.model, self.optimizer, lambda x, y: self.forward_loss(self.model, x, y)[1],
            inputs.to(self.device), targets.to(self.device), batch, min(self.micro_batch_size or batch, batch))
        memory.check_step_memory(step, available, self.device)

    def train_step(self, inputs: Tensor, targets: Tensor) -> tuple[float, float]:
        """One optimizer step on a batch (this process's share of the global batch under
        torchrun), forward and backward in micro-batches; returns this share's summed loss and
        summed score. Raises TrainingDiverged, before the update, if the loss is not finite."""
        count = distributed.all_sum([len(targets)], self.device)[0]  # the global batch size
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, score_sum = 0.0, 0.0
        for chunk_inputs, chunk_targets in self._micro_batches(inputs, targets):
            outputs, loss = self.forward_loss(self.network, chunk_inputs, chunk_targets)
            self.scaler.scale(loss / count).backward()
            loss_sum += loss.item()
            score_sum += self.objective.sample_scores(outputs.detach(), chunk_targets).sum().item()
        loss_value = distributed.all_sum([loss_sum], self.device)[0] / count
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"the training loss became {loss_value}")
        penalty = relaxation_penalty(self.model) if self.penalty_weight else None
        if penalty is not None and penalty.requires_grad:  # a model without relaxed layers: 0
            self.scaler.scale(self.penalty_weight * penalty / distributed.world_size()).backward()
        distributed.sum_gradients(self.model)
        if self.cfg.trainer.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, score_sum

    def train_epoch(self, loader: DataLoader, epoch: int, progress: Progress,
                    stop: StopSignals) -> dict[str, float] | None:
        """Train on ``loader`` (the epoch's batches after the ``progress.step`` already done),
        accumulating into ``progress``; the epoch's row, or None if a stop signal ended it early
        (``progress`` then holds the global running sums, ready for a checkpoint)."""
        self.model.train()
        start = time.perf_counter()
        stopped = False
        for inputs, targets in self._batches(loader, f"train {epoch}"):
            try:
                with self.times.phase(TRAIN_STEPS):
                    loss_sum, score_sum = self.train_step(inputs, targets)
            except TrainingDiverged as error:
                raise TrainingDiverged(f"{error} at epoch {epoch}, step {progress.step}") from None
            progress.loss_sum += loss_sum
            progress.score_sum += score_sum
            progress.seen += len(targets)
            progress.step += 1
            if distributed.any_rank(stop.requested, self.device):
                stopped = True
                break
        self.times.add(TRAIN_LOOP, time.perf_counter() - start)
        progress.epoch_seconds += time.perf_counter() - start
        progress.loss_sum, progress.score_sum, progress.seen = distributed.all_sum(
            [progress.loss_sum, progress.score_sum, progress.seen], self.device)
        if stopped:
            return None
        score = self.objective.finish(progress.score_sum / progress.seen)
        return {"train_loss": progress.loss_sum / progress.seen, f"train_{self.objective.score}": score}

    def recalibrate_batch_norm(self, train: Dataset) -> bool:
        """Recompute the running statistics of the model's batch-norm layers (if any) from a fixed
        set of ``trainer.bn_recalibration`` samples of ``train`` (data.fixed_subset), batched as in
        :meth:`evaluate` (precise_bn.py); False, doing nothing, if that is 0 or there are none."""
        if not self.bn_recalibration or not precise_bn.batch_norm_layers(self.model):
            return False
        loader = make_loader(fixed_subset(train, self.bn_recalibration), self.cfg.trainer.batch_size,
                             False, 0, self.cfg, self.device)

        def forward(inputs: Tensor, targets: Tensor) -> None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                self.objective.predict(self.model, inputs, targets)

        chunks = (chunk for batch in self._batches(loader, "batch norm") for chunk in self._micro_batches(*batch))
        samples = precise_bn.recalibrate(self.model, chunks, forward, self.device)
        if not self.recalibrated:
            log.info("batch norm: running statistics recomputed from %d training samples before "
                     "every evaluation (trainer.bn_recalibration)", samples)
            self.recalibrated = True
        return True

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, desc: str) -> dict[str, Any]:
        """Mean loss and the score over ``loader`` (keys "loss" and the objective's score; for an
        objective with per-step scores also "<score>_per_step", the score of every roll-out step)."""
        self.model.eval()
        total_loss, total_score, seen = 0.0, 0.0, 0
        step_scores = getattr(self.objective, "step_scores", None)
        total_steps: Tensor | None = None
        for batch in self._batches(loader, desc):
            for inputs, targets in self._micro_batches(*batch):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    outputs = self.objective.predict(self.network, inputs, targets)
                total_loss += self.objective.loss(outputs, targets).item() * len(targets)
                total_score += self.objective.sample_scores(outputs, targets).sum().item()
                if step_scores is not None:
                    steps = step_scores(outputs, targets).double().sum(0).cpu()
                    total_steps = steps if total_steps is None else total_steps + steps
                seen += len(targets)
        per_step = [] if total_steps is None else total_steps.tolist()
        total_loss, total_score, seen, *per_step = distributed.all_sum(
            [total_loss, total_score, seen, *per_step], self.device)
        result = {"loss": total_loss / seen, self.objective.score: self.objective.finish(total_score / seen)}
        if per_step:
            result[f"{self.objective.score}_per_step"] = [self.objective.finish(s / seen) for s in per_step]
        return result

    def step_scheduler(self, val_loss: float) -> None:
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any], changes: dict[str, tuple[Any, Any]]) -> None:
        """Restore the saved state, then apply the configuration ``changes`` of this resume: a
        new optimizer (scheduler) class starts with fresh state, changed hyperparameters (e.g.
        optimizer.lr) replace the saved ones."""
        try:
            self.model.load_state_dict(state["model"])
            if "optimizer._target_" in changes:
                log.warning("optimizer changed (%s -> %s): its state (moments, step counts) "
                            "starts afresh", *changes["optimizer._target_"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])
            if "scheduler._target_" in changes:
                log.warning("scheduler changed (%s -> %s): it starts afresh", *changes["scheduler._target_"])
            elif self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise checkpoint.CheckpointError(
                f"the checkpoint does not match this run's model or optimizer "
                f"({str(error).splitlines()[0]}); resume with the configuration it was written "
                "with, or start afresh with trainer.resume=false") from None
        for key, (_, value) in changes.items():
            group, _, name = key.partition(".")
            if group == "optimizer" and name in self.optimizer.param_groups[0]:
                for param_group in self.optimizer.param_groups:
                    param_group[name] = value
                if name == "lr" and self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
                    self.scheduler.base_lrs = [value] * len(self.optimizer.param_groups)
            elif group == "scheduler" and self.scheduler is not None and hasattr(self.scheduler, name):
                setattr(self.scheduler, name, value)


def window_stalled(values: list[float], window: int, sign: int) -> bool:
    """True when the mean of the last ``window`` values is no better than the mean of the
    ``window`` values before them (``sign``: +1 when higher is better, -1 when lower is); False
    while there are fewer than 2 ``window`` values."""
    if len(values) < 2 * window:
        return False
    recent, before = values[-window:], values[-2 * window:-window]
    return sign * (sum(recent) - sum(before)) <= 0


def fit(cfg: DictConfig, trainer: Trainer, tracker: RunTracker, splits: Splits, progress: Progress,
        save_last: Any, stop: StopSignals) -> None:
    """Epochs from ``progress.epoch + 1`` (from step ``progress.step`` within it): train,
    validate, step the scheduler, keep the best weights (``trainer.monitor``), checkpoint
    (``save_last()``), log; early stopping if configured (``trainer.early_stopping_patience``
    epochs without a new best, or :func:`window_stalled` over ``trainer.early_stopping_window``
    epochs once ``trainer.early_stopping_after`` are done); RunInterrupted on a stop signal, after
    the checkpoint. Under torchrun every rank computes the same numbers; rank 0 writes the files."""
    score, monitor = trainer.objective.score, cfg.trainer.monitor
    sign = monitor_sign(cfg)
    patience = cfg.trainer.early_stopping_patience
    window, after = cfg.trainer.get("early_stopping_window"), cfg.trainer.get("early_stopping_after", 0)
    files = RunFiles(tracker.run_dir)
    valid_loader = make_loader(splits.valid, cfg.trainer.batch_size, False, 0, cfg, trainer.device)
    with logging_redirect_tqdm(), tqdm(
            range(progress.epoch + 1, cfg.trainer.epochs + 1), desc="epochs",
            initial=progress.epoch, total=cfg.trainer.epochs, disable=None) as epochs:
        for epoch in epochs:
            if patience and progress.bad_epochs >= patience:
                log.info("early stopping: no improvement of %s for %d epochs", monitor, patience)
                break
            if window and progress.epoch >= after and window_stalled(
                    [row[monitor] for row in progress.history], window, sign):
                log.info("early stopping: the mean %s of the last %d epochs is no better than that of "
                         "the %d before", monitor, window, window)
                break
            if not progress.step or progress.batch_size is None:  # an epoch keeps its batches
                progress.batch_size = cfg.trainer.batch_size
            loader = make_loader(splits.train, progress.batch_size, True,
                                 cfg.seed * 100_003 + epoch, cfg, trainer.device,
                                 skip_batches=progress.step)
            train = trainer.train_epoch(loader, epoch, progress, stop)
            if train is None:
                save_last()
                raise stop.interruption(f"stopped by {stop.received} in epoch {epoch} after step "
                                        f"{progress.step}; the checkpoint is written")
            start, phase = time.perf_counter(), trainer.times.phase
            with phase("batch-norm recalibration"):
                trainer.recalibrate_batch_norm(splits.train)
            with phase("validation"):
                val = trainer.evaluate(valid_loader, f"valid {epoch}")
            row = {"epoch": epoch, **train, "val_loss": val["loss"], f"val_{score}": val[score],
                   "lr": trainer.optimizer.param_groups[0]["lr"]}
            with phase("scheduler"):
                trainer.step_scheduler(val["loss"])
            seconds = progress.epoch_seconds + time.perf_counter() - start
            progress.train_seconds += seconds
            if progress.best is None or sign * (row[monitor] - progress.best) > 0:
                progress.best, progress.best_epoch, progress.bad_epochs = row[monitor], epoch, 0
                if distributed.is_main():
                    with phase("checkpoint best.pt"):
                        checkpoint.save_best(files, trainer.model.state_dict(), epoch)
            else:
                progress.bad_epochs += 1
            progress.epoch = epoch
            progress.start_epoch()
            progress.history.append(row)
            with phase("checkpoint last.pt"):
                save_last()
            with phase("metrics files and logger"):
                tracker.log_epoch(row)
            log.info("epoch %d/%d  train loss %.4g %s %.4g  val loss %.4g %s %.4g  (%.1fs)",
                     epoch, cfg.trainer.epochs, row["train_loss"], score, row[f"train_{score}"],
                     row["val_loss"], score, row[f"val_{score}"], seconds)
            if distributed.any_rank(stop.requested, trainer.device):
                raise stop.interruption(f"stopped by {stop.received} after epoch {epoch}; the "
                                        "checkpoint is written")


def run(plan: Plan, stop: StopSignals | None = None) -> dict[str, Any]:
    """Train, validate and test the experiment ``plan`` (resume.py) holds: its checked config, its
    run directory, the checkpoint it continues and this resume's config changes (a fresh run:
    ``Plan(cfg, run_dir)``); ``stop``: the command's active stop signals (else the run installs
    its own). Returns the metrics written to metrics.json; RunInterrupted if a stop signal ended
    it. Under torchrun the run directory is rank 0's."""
    device = distributed.setup(resolve_device(plan.cfg.trainer.device))
    try:
        with contextlib.ExitStack() as stack:
            stop = stop or stack.enter_context(StopSignals())
            return _run(plan, RunFiles(distributed.broadcast(plan.run_dir)), device, stop)
    finally:
        distributed.teardown()


def _run(plan: Plan, files: RunFiles, device: torch.device, stop: StopSignals) -> dict[str, Any]:
    cfg, main = plan.cfg, distributed.is_main()
    tracker = trainer = None
    progress = Progress()
    try:
        # nothing to save before the first checkpoint: a stop signal ends these phases at once
        # (the resume starts the run afresh in its directory, resume.py)
        with stop.immediately("before training (nothing to save yet)"):
            checkpoint.seed_everything(cfg.seed)
            model = build_model(cfg)
            num_params = count_parameters(model)
            log.info("model %s on %s\n%s", cfg.model._target_, device, model_summary(model))
            log.info("parameters: %s", f"{num_params:,}")
            if cfg.summary_only:
                return {"name": cfg.name, "model": cfg.model._target_, "overrides": merge_overrides(plan.overrides, []),
                        "num_params": num_params, "summary_only": True}
            splits = load_data(cfg)
            trainer = Trainer(cfg, model, device)
            if cfg.trainer.get("memory_check", True):  # absent in older runs' configs
                trainer.check_memory(splits.train)
            progress, wandb_id = Progress(), uuid.uuid4().hex[:12]
            if plan.saved is not None:
                progress, wandb_id = restore(plan, trainer, files), plan.saved.get("wandb_id", wandb_id)
            tracker = RunTracker(files.root, OmegaConf.to_container(cfg, resolve=True), cfg.logger.wandb,
                                 cfg.name, enabled=main, run_id=wandb_id)
            tracker.restore(progress.history)
        config = OmegaConf.to_container(cfg, resolve=False)

        def save_last() -> None:
            if main:
                checkpoint.save(files.last, {
                    "trainer": trainer.state_dict(), "rng": checkpoint.rng_state(),
                    "progress": progress.to_dict(), "config": config, "overrides": plan.overrides,
                    "wandb_id": wandb_id})

        fit(cfg, trainer, tracker, splits, progress, save_last, stop)
        # last.pt holds the whole training: a stop signal ends the test at once (the resume tests)
        with stop.immediately(f"during the final test, after epoch {progress.epoch} (the "
                              "checkpoint is written; the resume only tests)"):
            return _test(plan, files, trainer, tracker, splits, progress, num_params, device)
    except TrainingDiverged as error:
        tracker.close()
        if files.last.is_file():
            advice = (f"the last good checkpoint is {files.last}. Resume from it with a lower learning "
                      f"rate or gradient clipping: python runner.py "
                      f"{resume_argument(files.root)} optimizer.lr={cfg.optimizer.lr / 10:g} "
                      "(or trainer.grad_clip=1.0)")
        else:
            advice = "no epoch completed. Start again with a lower optimizer.lr or trainer.grad_clip=1.0"
        raise TrainingDiverged(f"{error}; {advice}") from None
    except BaseException as error:
        if tracker is not None:
            tracker.close()
        if memory.is_out_of_memory(error) and trainer is not None:  # in training (before: a plain error)
            raise memory.OutOfMemory(out_of_memory_advice(error, progress, trainer, files)) from None
        raise


def _test(plan: Plan, files: RunFiles, trainer: Trainer, tracker: RunTracker, splits: Splits,
          progress: Progress, num_params: int, device: torch.device) -> dict[str, Any]:
    """The best-validation weights (best.pt, batch norm recalibrated) on every test set;
    metrics.json (status finished), curves and the relaxation plot."""
    cfg, main, model = plan.cfg, distributed.is_main(), trainer.model
    distributed.barrier()  # rank 0 has written best.pt
    best = checkpoint.load(files.best, checkpoint.BEST)
    model.load_state_dict(best["model"])
    if trainer.recalibrate_batch_norm(splits.train) and main:  # best.pt: the statistics tested
        checkpoint.save_best(files, model.state_dict(), best["epoch"])
    metrics = {"name": cfg.name, "model": cfg.model._target_, "overrides": merge_overrides(plan.overrides, []),
               "num_params": num_params, "best_epoch": progress.best_epoch,
               f"best_{cfg.trainer.monitor}": progress.best, "epochs_completed": progress.epoch,
               "train_seconds": round(progress.train_seconds, 3), "device": str(device)}
    if progress.changes:
        metrics["config_changes"] = progress.changes
    with trainer.times.phase("test and equivariance metric (once)"):
        metrics.update(test_metrics(cfg, trainer, splits))
    if trainer.times.enabled:
        metrics["profile"] = trainer.times.summary()
        log.info("time per phase (trainer.profile):\n%s", trainer.times.table())
    if main and plot_relaxation(model, files.relaxation):
        log.info("symmetry-breaking maps of the relaxed layers: %s", files.relaxation)
    if main and plot_step_scores(metrics, files.rollout_rmse):
        log.info("test RMSE per roll-out step: %s", files.rollout_rmse)
    tracker.finish(metrics)
    log.info("test: %s (best epoch %s); outputs in %s",
             ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                       if k.startswith("test_") and isinstance(v, (int, float))),
             progress.best_epoch, files.root)
    return metrics


def out_of_memory_advice(error: BaseException, progress: Progress, trainer: Trainer, files: RunFiles) -> str:
    """One line for an out-of-memory error during training: where, and how to go on."""
    last, run_dir = files.last, files.root
    micro = trainer.micro_batch_size or trainer.cfg.trainer.batch_size
    where = f"out of memory in epoch {progress.epoch + 1} ({memory.describe(error)})"
    if last.is_file():
        return (f"{where}; the last checkpoint is {last}: resume from it with a smaller micro-batch: "
                f"python runner.py trainer.resume={run_dir} trainer.micro_batch_size={max(1, micro // 2)}")
    return (f"{where}; no epoch completed: lower trainer.micro_batch_size (micro-batches of {micro} samples "
            "now) or the model's size (model.channels)")


def test_metrics(cfg: DictConfig, trainer: Trainer, splits: Splits) -> dict[str, float]:
    """Loss and score on every test set (``test_acc``; ``test_future_rmse``, ...), the per-step
    scores of a roll-out objective (``test_future_rmse_per_step``: a list, step 1 first), and the
    equivariance error of the model on the first test batch."""
    metrics: dict[str, float] = {}
    for name, dataset in splits.test_sets.items():
        loader = make_loader(dataset, cfg.trainer.batch_size, False, 0, cfg, trainer.device)
        prefix = "test" if name == "test" else f"test_{name}"
        result = trainer.evaluate(loader, name)
        metrics[f"{prefix}_loss"] = result["loss"]
        metrics[f"{prefix}_{trainer.objective.score}"] = result[trainer.objective.score]
        per_step = f"{trainer.objective.score}_per_step"
        if per_step in result:
            metrics[f"{prefix}_{per_step}"] = result[per_step]
    inputs = next(iter(make_loader(next(iter(splits.test_sets.values())), 8, False, 0, cfg,
                                   trainer.device)))[0].to(trainer.device)
    error = equivariance_metric(trainer.model, inputs)
    if error is not None:
        metrics["equivariance_error"] = error
    return metrics
