"""SSD priors (anchors) of the ANCIS detector (spec §3)."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import List, Tuple

import torch
from torch import Tensor

LEVELS: Tuple[int, ...] = (3, 4, 5, 6)
MIN_SCALES: Tuple[float, ...] = (0.04, 0.10, 0.26, 0.42)
MAX_SCALES: Tuple[float, ...] = (0.10, 0.26, 0.42, 0.58)
ASPECT_RATIOS: Tuple[Tuple[int, ...], ...] = ((2,), (2, 3), (2, 3), (2, 3))


def priors_per_cell(level_index: int) -> int:
    """Number of priors a cell of level ``level_index`` (0 = c3) carries: 2 + 2 per ratio."""
    return 2 + 2 * len(ASPECT_RATIOS[level_index])


def feature_map_sizes(height: int, width: int) -> List[Tuple[int, int]]:
    """``(h, w)`` of the four prediction maps: ``ceil(H / 2^p)``, ``ceil(W / 2^p)``."""
    return [(math.ceil(height / 2**p), math.ceil(width / 2**p)) for p in LEVELS]


def _cell_shapes(level_index: int, height: int) -> List[Tuple[float, float]]:
    # (quirk) both scales are multiplied by H, for heights and widths alike.
    smin = MIN_SCALES[level_index] * height
    smax = MAX_SCALES[level_index] * height
    shapes = [(smin, smin), (math.sqrt(smin * smax), math.sqrt(smin * smax))]
    for ratio in ASPECT_RATIOS[level_index]:
        root = math.sqrt(ratio)
        shapes += [(smin / root, smin * root), (smin * root, smin / root)]
    return shapes


@lru_cache(maxsize=16)
def _priors_cached(height: int, width: int, scale_height: int) -> Tensor:
    levels = []
    for index, ((h, w), p) in enumerate(zip(feature_map_sizes(height, width), LEVELS)):
        step = float(2**p)
        cy = (torch.arange(h, dtype=torch.float64) + 0.5) * step
        cx = (torch.arange(w, dtype=torch.float64) + 0.5) * step
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        shapes = torch.tensor(_cell_shapes(index, scale_height), dtype=torch.float64)  # [A, 2]
        centres = torch.stack([grid_y, grid_x], dim=-1).reshape(-1, 1, 2).expand(-1, len(shapes), 2)
        sizes = shapes.unsqueeze(0).expand(h * w, -1, 2)
        levels.append(torch.cat([centres, sizes], dim=-1).reshape(-1, 4))
    return torch.cat(levels).to(torch.float32)


def make_priors(height: int, width: int, device: torch.device | str | None = None,
                scale_height: int | None = None) -> Tensor:
    """Priors for an ``height x width`` network input.

    ``scale_height`` (default ``height``) is the height the prior sizes are taken from.
    Training on ``256 x 256`` crops of what will be a ``512 x 512`` input uses
    ``scale_height=512``: the crop's priors are then exactly those of the full input in the
    same cells, so a fully convolutional head learns the full-size parameterisation.

    Returns:
        ``[P, 4]`` float32 ``(cy, cx, h, w)`` in input pixels, levels c3..c6, cells in
        row-major order, the per-cell order of spec §3 (24,448 rows at 512 x 512).
        The CPU tensor is cached per size; do not modify it in place.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"input size must be positive, got {height}x{width}")
    priors = _priors_cached(int(height), int(width), int(scale_height or height))
    return priors if device is None else priors.to(device)
