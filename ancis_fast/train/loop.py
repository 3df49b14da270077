"""The epoch/step loop shared by detector and segmenter training: optimiser and schedule,
progress bar with running loss, periodic validation, atomic checkpoints, resume."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .checkpoint import append_log, load_state, save_atomic, save_weights
from .data import ExampleDataset, make_loader
from .optim import Recipe, build_optimizer, build_scheduler

StepFn = Callable[[Dict[str, Any]], Tuple[Tensor, Dict[str, float]]]
ValidateFn = Callable[[], Dict[str, float]]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; explicit CUDA without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use --device cpu (or auto)")
    return resolved


@dataclass
class LoopConfig:
    """Settings of :class:`TrainLoop` (see the train CLI for their meaning)."""

    out_dir: Path
    stage: str
    recipe: Recipe
    seed: int = 0
    workers: int = 0
    val_every: int = 1
    save_every: int = 0
    resume: bool = False
    max_steps: Optional[int] = None
    time_limit: Optional[float] = None
    stop_after: Optional[float] = None
    freeze_bn: bool = False
    quiet: bool = False
    score_key: str = "ap50"
    record: Dict[str, Any] = field(default_factory=dict)


class TrainLoop:
    """Runs ``step_fn`` over epochs of ``dataset`` and updates ``model``.

    ``step_fn(batch) -> (loss, logs)`` computes the loss of one batch (the loop does the
    backward pass and the update); ``validate_fn() -> metrics`` scores the current model,
    and ``metrics[score_key]`` selects the best checkpoint.
    """

    def __init__(self, cfg: LoopConfig, model: nn.Module, dataset: ExampleDataset, step_fn: StepFn,
                 validate_fn: Optional[ValidateFn] = None):
        self.cfg, self.model, self.dataset = cfg, model, dataset
        self.step_fn, self.validate_fn = step_fn, validate_fn
        self.steps_per_epoch = max(1, len(dataset) // cfg.recipe.batch_size)
        self.elapsed_before = 0.0  # training seconds of earlier runs (resume)
        self.started = time.monotonic()
        self.optimizer = build_optimizer(model, cfg.recipe)
        self.scheduler = build_scheduler(self.optimizer, cfg.recipe, self.steps_per_epoch, self.time_progress)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best = -math.inf
        self.history: List[Dict[str, Any]] = []
        cfg.out_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ files
    def path(self, suffix: str = "") -> Path:
        return self.cfg.out_dir / f"{self.cfg.stage}{suffix}.pt"

    def save(self) -> None:
        save_weights(self.model, self.path())
        save_atomic({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step, "best": self.best, "history": self.history, "elapsed": self.elapsed(),
            "torch_rng": torch.get_rng_state(), "config": self.cfg.record,
        }, self.path("_state"))

    def restore(self) -> bool:
        state = load_state(self.path("_state"))
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), float(state["best"])
        self.history = list(state["history"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        torch.set_rng_state(state["torch_rng"])
        return True

    # ------------------------------------------------------------------ time
    def elapsed(self) -> float:
        """Training seconds so far, earlier (resumed) runs included."""
        return self.elapsed_before + time.monotonic() - self.started

    def time_progress(self) -> float:
        """Spent fraction of ``time_limit`` (0 without one)."""
        return min(1.0, self.elapsed() / self.cfg.time_limit) if self.cfg.time_limit else 0.0

    def slice_is_over(self) -> bool:
        """This run has trained ``stop_after`` seconds: stop with a checkpoint (to resume),
        leaving the schedule where it is."""
        return self.cfg.stop_after is not None and time.monotonic() - self.started >= self.cfg.stop_after

    def time_is_up(self) -> bool:
        return self.cfg.time_limit is not None and self.elapsed() >= self.cfg.time_limit

    # ------------------------------------------------------------------ steps
    def train_mode(self) -> None:
        """``model.train()``, with BatchNorm layers kept in eval mode under ``freeze_bn``:
        their running statistics stay those of the initial weights (small-batch
        fine-tuning on a new mix of images would otherwise drift them)."""
        self.model.train()
        if self.cfg.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _update(self, loss: Tensor) -> bool:
        if not torch.isfinite(loss):
            return False
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.recipe.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.recipe.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        return True

    def _validate(self, epoch_loss: float, last: bool = False) -> None:
        record: Dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, "loss": epoch_loss,
                                  "lr": self.optimizer.param_groups[0]["lr"], "time": time.time()}
        last = last or self.epoch == self.cfg.recipe.epochs
        if self.validate_fn is not None and (self.epoch % self.cfg.val_every == 0 or last):
            metrics = self.validate_fn()
            self.train_mode()
            record.update(metrics)
            score = metrics.get(self.cfg.score_key, math.nan)
            if score == score and score > self.best:  # NaN never wins
                self.best = score
                save_weights(self.model, self.path("_best"))
            if not self.cfg.quiet:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
                tqdm.write(f"{self.cfg.stage} epoch {self.epoch}: loss {epoch_loss:.4f}; {shown}")
        self.history.append(record)
        append_log(self.cfg.out_dir, {"stage": self.cfg.stage, **record})

    def run(self) -> Dict[str, Any]:
        """Train to the recipe's epoch count (or ``max_steps``, or ``time_limit`` seconds, after
        which it validates and checkpoints as at the last epoch; or, for this run only,
        ``stop_after`` seconds, after which it checkpoints to be resumed); returns a summary."""
        self.started = time.monotonic()
        if self.cfg.resume and self.restore() and not self.cfg.quiet:
            tqdm.write(f"resuming {self.cfg.stage} at epoch {self.epoch}, batch {self.batch_in_epoch}")
        skipped = 0
        while self.epoch < self.cfg.recipe.epochs:
            losses: List[float] = []
            loader = make_loader(self.dataset, self.cfg.recipe.batch_size, self.epoch, self.cfg.seed,
                                 self.batch_in_epoch, self.cfg.workers)
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=self.cfg.quiet,
                       desc=f"{self.cfg.stage} {self.epoch + 1}/{self.cfg.recipe.epochs}", unit="step")
            running = None
            self.train_mode()
            for batch in loader:
                loss, logs = self.step_fn(batch)
                if not self._update(loss):
                    skipped += 1
                    tqdm.write(f"warning: non-finite loss at step {self.global_step}; update skipped")
                value = float(loss.detach())
                losses.append(value)
                running = value if running is None else 0.95 * running + 0.05 * value
                self.global_step += 1
                self.batch_in_epoch += 1
                bar.update()
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                **{k: f"{v:.3f}" for k, v in logs.items()})
                if self.cfg.save_every and self.global_step % self.cfg.save_every == 0:
                    self.save()
                if self.slice_is_over() or (self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps):
                    bar.close()
                    self.save()
                    return self.summary(skipped, stopped_early=True)
                if self.time_is_up():
                    bar.close()
                    self._validate(sum(losses) / len(losses), last=True)
                    self.save()
                    return self.summary(skipped, stopped_early=True)
            bar.close()
            self.epoch += 1
            self.batch_in_epoch = 0
            self._validate(sum(losses) / max(1, len(losses)))
            self.save()
        return self.summary(skipped, stopped_early=False)

    def summary(self, skipped: int, stopped_early: bool) -> Dict[str, Any]:
        return {"weights": str(self.path()), "best_weights": str(self.path("_best")) if self.best > -math.inf else None,
                "best": self.best, "epoch": self.epoch, "global_step": self.global_step,
                "skipped_steps": skipped, "stopped_early": stopped_early, "history": self.history}
