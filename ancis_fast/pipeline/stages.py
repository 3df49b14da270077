"""The stage interface the reference and fast pipelines share.

A pipeline's ``run(batch, original_sizes, timed=untimed)`` takes network inputs ``batch
[B,3,H,W]`` (:func:`~ancis_fast.pipeline.preprocess.preprocess`) of images of
``original_sizes`` ``(H, W)`` and returns one :class:`~ancis_fast.Instances` per image, in its
own pixels. It runs each of its :data:`STAGES` as ``timed(stage, fn, *args)``, which
benchmarks replace to time them (``benchmarks/fps.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Sequence, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from typing import Protocol

    from ..instances import Instances

    class Pipeline(Protocol):
        def run(self, batch: Tensor, original_sizes: List[Tuple[int, int]],
                timed: "StageTimer" = ...) -> List[Instances]: ...

#: the stages of a prediction, in order; ``preprocess`` is the Predictor's
STAGES = ("preprocess", "detector", "detect", "mask", "paste")
#: ``timed(stage, fn, *args)`` runs ``fn(*args)`` as stage ``stage`` and returns its result
StageTimer = Callable[..., Any]


def untimed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """The default :data:`StageTimer`: just run the stage."""
    return fn(*args)


def image_scale(input_size: Sequence[int], original_size: Sequence[int]) -> Tensor:
    """Factors from network-input to original-image pixels, ``[4]`` for (y1, x1, y2, x2)."""
    height, width = input_size
    return torch.tensor([original_size[0] / height, original_size[1] / width] * 2)
