"""Settings shared by the training stages (:mod:`.detector`, :mod:`.segmenter`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, Optional, Tuple

from ..data.augment import AugmentConfig
from .loop import LoopConfig
from .optim import Recipe


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Settings of one training stage; ``None`` fields take the recipe's value.

    ``input_size`` is the training input ``(H, W)``. The priors scale with the input
    height (spec §3), so a model is used at the input size it was trained at, unless
    ``prior_height`` is set: training on ``256 x 256`` crops with ``prior_height=512``
    gives exactly the priors of a ``512 x 512`` input in those cells, so the model then
    runs at the Predictor's default 512 input. That input is the *frame*
    (:meth:`frame_size`): images of dataset folders are resized to it, as the Predictor
    does, and cut into input-size crops (:class:`~.data.FrameCrops`). ``max_expand`` is the
    augmentation's largest zoom-out (1 disables it).
    """

    recipes: ClassVar[Dict[str, Recipe]] = {}

    out_dir: str
    backbone: str = "resnet50"
    input_size: Tuple[int, int] = (512, 512)
    prior_height: Optional[int] = None
    recipe: str = "release"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    warmup_steps: Optional[int] = None
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    val_every: int = 1
    save_every: int = 0
    resume: bool = False
    init_weights: Optional[str] = None
    max_steps: Optional[int] = None
    time_limit: Optional[float] = None
    stop_after: Optional[float] = None
    freeze_bn: bool = False
    amp: bool = False
    rot90: bool = False
    max_expand: float = 2.0
    match_iou: float = 0.5
    conf_thresh: float = 0.3
    nms_thresh: float = 0.3
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit={self.time_limit}; expected None or seconds > 0")
        if self.stop_after is not None and self.stop_after <= 0:
            raise ValueError(f"stop_after={self.stop_after}; expected None or seconds > 0")
        if self.prior_height is not None and self.prior_height < 64:
            raise ValueError(f"prior_height={self.prior_height}; expected None or an input height >= 64")

    def frame_size(self) -> Tuple[int, int]:
        """The inference input ``(H, W)`` the model is trained for: ``prior_height`` high (same
        aspect as ``input_size``) when set, else ``input_size``."""
        if self.prior_height is None:
            return tuple(self.input_size)
        height, width = self.input_size
        return self.prior_height, round(self.prior_height * width / height)

    def augmentation(self) -> AugmentConfig:
        return AugmentConfig(output_size=tuple(self.input_size), rot90=self.rot90, max_expand=self.max_expand)

    def resolved_recipe(self) -> Recipe:
        if self.recipe not in self.recipes:
            raise ValueError(f"recipe={self.recipe!r}; expected one of {sorted(self.recipes)}")
        return self.recipes[self.recipe].with_overrides(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                                        warmup_steps=self.warmup_steps)

    def loop_config(self, stage: str, recipe: Recipe) -> LoopConfig:
        """The :class:`~.loop.LoopConfig` of this stage (best checkpoint by validation AP@0.5),
        recording these settings and the resolved recipe in every checkpoint."""
        return LoopConfig(out_dir=Path(self.out_dir), stage=stage, recipe=recipe, seed=self.seed, workers=self.workers,
                          val_every=self.val_every, save_every=self.save_every, resume=self.resume,
                          max_steps=self.max_steps, time_limit=self.time_limit, stop_after=self.stop_after,
                          freeze_bn=self.freeze_bn, quiet=self.quiet, score_key="ap50",
                          record={**dataclasses.asdict(self), "recipe_resolved": dataclasses.asdict(recipe)})
