"""Optimiser recipes: the release's (documented default) and a faster-converging one
for training from scratch.

``release`` follows spec §7 exactly: detector SGD lr 1e-3, momentum 0.9, no weight decay,
batch 2, 500 epochs, lr x0.1 for the last 10 % (epoch 450); segmenter Adam lr 1e-3,
lr x0.98 per epoch, batch 8, 100 epochs. It assumed an ImageNet-initialised trunk.

``fast`` is for training from random weights in few steps: AdamW (weight decay 1e-4 on
conv/linear weights only), linear warm-up, cosine decay to 1 % of the peak, gradient
norm clipping at 10.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and default length of one training stage.

    Attributes:
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        schedule: ``step`` (x ``gamma`` after ``step_at`` of training), ``exp`` (x
            ``gamma`` per epoch) or ``cosine`` (to ``min_lr_ratio``).
        warmup_steps: linear warm-up from 1 % of ``lr``.
        clip_grad: max gradient norm, 0 = off.
    """

    name: str
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    schedule: str
    momentum: float = 0.9
    weight_decay: float = 0.0
    gamma: float = 0.1
    step_at: float = 0.9
    min_lr_ratio: float = 0.01
    warmup_steps: int = 0
    clip_grad: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}; expected sgd, adam or adamw")
        if self.schedule not in ("step", "exp", "cosine"):
            raise ValueError(f"schedule={self.schedule!r}; expected step, exp or cosine")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"recipe {self.name!r}: lr, epochs and batch_size must be positive")

    def with_overrides(self, **changes) -> "Recipe":
        """Copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


DETECTOR_RECIPES: Dict[str, Recipe] = {
    "release": Recipe("release", "sgd", lr=1e-3, epochs=500, batch_size=2, schedule="step"),
    "fast": Recipe("fast", "adamw", lr=1e-3, epochs=60, batch_size=4, schedule="cosine", weight_decay=1e-4,
                   warmup_steps=300, clip_grad=10.0),
}
SEGMENTER_RECIPES: Dict[str, Recipe] = {
    "release": Recipe("release", "adam", lr=1e-3, epochs=100, batch_size=8, schedule="exp", gamma=0.98),
    "fast": Recipe("fast", "adamw", lr=1e-3, epochs=20, batch_size=4, schedule="cosine", weight_decay=1e-4,
                   warmup_steps=100, clip_grad=10.0),
}


def _param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on conv/linear weights only (not on biases or norm parameters)."""
    decay, plain = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else plain).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = _param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int, time_progress: float = 0.0) -> float:
    """Multiplier of ``recipe.lr`` at optimiser step ``step`` (0-based).

    ``time_progress`` (0..1, the spent fraction of a time limit) moves the ``cosine`` and
    ``step`` schedules on when it is ahead of the step count, so that a run bounded by
    wall-clock time still ends annealed.
    """
    total = max(1, recipe.epochs * steps_per_epoch)
    warm = min(1.0, 0.01 + 0.99 * step / recipe.warmup_steps) if recipe.warmup_steps else 1.0
    progress = min(1.0, max(step / total, time_progress))
    if recipe.schedule == "step":
        factor = recipe.gamma if progress >= int(recipe.step_at * recipe.epochs) / recipe.epochs else 1.0
    elif recipe.schedule == "exp":
        factor = recipe.gamma ** (step // max(1, steps_per_epoch))
    else:
        factor = recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return warm * factor


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int,
                    time_progress: Callable[[], float] = lambda: 0.0) -> LambdaLR:
    """Per-step scheduler (call ``.step()`` after every optimiser step); ``time_progress()``
    is read at every step (see :func:`lr_factor`)."""
    return LambdaLR(optimizer, lambda step: lr_factor(recipe, step, steps_per_epoch, time_progress()))
