"""Segmenting images larger than the network input, tile by tile, with seam stitching.

Tiles of ``tile x tile`` pixels overlap by ``overlap``. Each image point is *owned* by
exactly one tile: the seam between two tiles runs through the middle of their overlap.
A cell is kept from the tile that owns its box centre, so a cell that crosses a seam is
taken whole from one tile (if it reaches less than ``overlap / 2`` past the seam) instead
of as two halves. Near-duplicates that two tiles still both report (their centres fall on
either side of the seam) are resolved by mask IoU, keeping the one seen farther from its
tile's border. Memory is bounded by one tile plus the cells' mask patches.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import numpy as np

from .instances import Instances
from .masks import PatchMasks

DUPLICATE_IOU = 0.3
SEAM_MARGIN = 4  # px beyond the seam in which a centre still counts, so no cell falls between tiles


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles covering ``[0, length)``; the last tile ends at ``length``."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ownership(starts: List[int], tile: int, length: int) -> List[Tuple[float, float]]:
    """``[lo, hi)`` owned by each tile along one axis: seams halfway through overlaps."""
    bounds = []
    for i, start in enumerate(starts):
        lo = 0.0 if i == 0 else (start + starts[i - 1] + tile) / 2
        hi = float(length) if i == len(starts) - 1 else (starts[i + 1] + start + tile) / 2
        bounds.append((lo, hi))
    return bounds


def predict_tiled(image: np.ndarray, predict_tile: Callable[[np.ndarray], Instances], tile: int = 512,
                  overlap: int = 64) -> Instances:
    """Segment ``image`` (``HxW[xC]``) tile by tile with ``predict_tile`` and stitch.

    Args:
        predict_tile: segments one tile array; returns Instances in tile pixels.
        tile, overlap: tile side and overlap in image pixels (``overlap`` should exceed
            the largest cell diameter).
    Returns:
        Instances in image pixels, sorted by descending score.
    """
    height, width = image.shape[:2]
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    own_y, own_x = _ownership(ys, tile, height), _ownership(xs, tile, width)
    kept = []  # (score, box, patch, origin, label, distance to tile border, near a seam)
    for y0, (ylo, yhi) in zip(ys, own_y):
        for x0, (xlo, xhi) in zip(xs, own_x):
            found = predict_tile(image[y0 : y0 + tile, x0 : x0 + tile])
            th, tw = found.image_size
            for i in range(len(found)):
                y1, x1, y2, x2 = found.boxes[i]
                cy, cx = (y1 + y2) / 2 + y0, (x1 + x2) / 2 + x0
                if not (ylo - SEAM_MARGIN <= cy < yhi + SEAM_MARGIN and xlo - SEAM_MARGIN <= cx < xhi + SEAM_MARGIN):
                    continue
                # twice the keeping margin: two tiles place one cell's centre a little differently, and
                # a cell that both keep must be compared as near the seam in both
                near_seam = min(cy - ylo if ylo > 0 else np.inf, yhi - cy if yhi < height else np.inf,
                                cx - xlo if xlo > 0 else np.inf, xhi - cx if xhi < width else np.inf) < 2 * SEAM_MARGIN
                border = min(y1 if y0 > 0 else np.inf, x1 if x0 > 0 else np.inf,
                             th - y2 if y0 + th < height else np.inf, tw - x2 if x0 + tw < width else np.inf)
                kept.append((float(found.scores[i]), found.boxes[i] + np.array([y0, x0, y0, x0], np.float32),
                             found.mask_patches.patches[i], found.mask_patches.origins[i] + (y0, x0),
                             int(found.labels[i]), float(border), bool(near_seam)))
    kept = _drop_duplicates(kept)
    kept.sort(key=lambda k: -k[0])
    if not kept:
        return Instances.empty((height, width))
    masks = PatchMasks([k[2] for k in kept], np.array([k[3] for k in kept]), (height, width))
    return Instances(np.stack([k[1] for k in kept]), np.array([k[0] for k in kept]), masks,
                     np.array([k[4] for k in kept]))


def _patch_iou(a_patch, a_origin, b_patch, b_origin) -> float:
    y0, x0 = max(a_origin[0], b_origin[0]), max(a_origin[1], b_origin[1])
    y1 = min(a_origin[0] + a_patch.shape[0], b_origin[0] + b_patch.shape[0])
    x1 = min(a_origin[1] + a_patch.shape[1], b_origin[1] + b_patch.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0.0
    inter = np.logical_and(a_patch[y0 - a_origin[0] : y1 - a_origin[0], x0 - a_origin[1] : x1 - a_origin[1]],
                           b_patch[y0 - b_origin[0] : y1 - b_origin[0], x0 - b_origin[1] : x1 - b_origin[1]]).sum()
    union = a_patch.sum() + b_patch.sum() - inter
    return float(inter / union) if union else 0.0


def _drop_duplicates(kept: list) -> list:
    """Among cells near a seam (only those can be reported by two tiles) whose masks
    overlap by IoU > DUPLICATE_IOU, keep the one farthest from its tile's border (best
    context), ties to the higher score."""
    interior = [k for k in kept if not k[6]]
    seam = sorted((k for k in kept if k[6]), key=lambda k: (-k[5], -k[0]))
    survivors: list = []
    for cell in seam:
        box, patch, origin = cell[1], cell[2], cell[3]
        duplicate = any(
            box[0] < other[1][2] and other[1][0] < box[2] and box[1] < other[1][3] and other[1][1] < box[3]
            and _patch_iou(patch, origin, other[2], other[3]) > DUPLICATE_IOU
            for other in survivors
        )
        if not duplicate:
            survivors.append(cell)
    return interior + survivors
