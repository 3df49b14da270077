"""One annotated image and the geometry derived from its instance label map.

A :class:`Sample` stores instances as a label map (``0`` background, ``k > 0`` cell ``k``):
compact, and every transform of the image applies to it unchanged. Boxes are always
derived from it with :func:`boxes_from_labels`, following spec §9.

Boxes are ``(y1, x1, y2, x2)`` float pixels with **inclusive** integer corners (``y2`` is
the last row of the cell), as the release computes them from the masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np


@dataclass
class Sample:
    """An image and its instance labels.

    Attributes:
        image: ``HxW`` (gray) or ``HxWx3`` (BGR) array, uint8 or uint16 (any depth the
            readers return; convert with :func:`ancis_fast.pipeline.preprocess.to_bgr8`).
        labels: int32 ``HxW`` instance label map, 0 = background.
        name: identifier (file stem or DSB id).
    """

    image: np.ndarray
    labels: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        if self.image.shape[:2] != self.labels.shape:
            raise ValueError(f"sample {self.name!r}: image is {self.image.shape[:2]} but labels are "
                             f"{self.labels.shape}; they must have the same height and width")
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int32)

    @property
    def num_instances(self) -> int:
        return len(instance_ids(self.labels))


def instance_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted non-zero ids present in ``labels`` (int64 ``[N]``)."""
    top = int(labels.max(initial=0))
    if int(labels.min(initial=0)) < 0:
        raise ValueError(f"label map has negative ids (min {int(labels.min())}); ids must be >= 0")
    if top <= 4 * labels.size + 1024:  # dense ids: a histogram beats sorting
        ids = np.flatnonzero(np.bincount(labels.ravel(), minlength=top + 1))
    else:
        ids = np.unique(labels)
    return ids[ids != 0].astype(np.int64)


def label_extents(labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vectorised extent of every id: ``(ids [N], bounds [N,4])`` with inclusive int64
    ``(y1, x1, y2, x2)`` bounds, ids ascending."""
    ys, xs = np.nonzero(labels)
    values = labels[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    bounds = np.stack([
        np.minimum.reduceat(ys, starts), np.minimum.reduceat(xs, starts),
        np.maximum.reduceat(ys, starts), np.maximum.reduceat(xs, starts),
    ], axis=1).astype(np.int64)
    return values[starts].astype(np.int64), bounds


def _largest_component_bounds(patch: np.ndarray) -> Tuple[int, int, int, int]:
    """Inclusive bounds of the largest 8-connected component of a bool patch."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(patch.astype(np.uint8), connectivity=8)
    if count <= 2:  # background + a single component: the patch extent already is its box
        return 0, 0, patch.shape[0] - 1, patch.shape[1] - 1
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # ties: first in raster order
    x, y, w, h = (int(stats[best, k]) for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                   cv2.CC_STAT_HEIGHT))
    return y, x, y + h - 1, x + w - 1


def boxes_from_labels(labels: np.ndarray, min_extent: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes of the instances of a label map (spec §9).

    Each box is the extent of the instance's largest 8-connected component; boxes with
    ``y2 - y1 <= min_extent`` or ``x2 - x1 <= min_extent`` are dropped (the release drops
    extents <= 1 pixel).

    Args:
        labels: integer ``HxW`` label map, 0 = background.
    Returns:
        ``boxes`` float32 ``[N,4]`` (y1, x1, y2, x2), inclusive pixel corners, and the
        matching ``ids`` int64 ``[N]``, ascending.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map, got shape {labels.shape}")
    ids, bounds = label_extents(labels)
    boxes = np.zeros((len(ids), 4), np.float32)
    for i, (label, (y1, x1, y2, x2)) in enumerate(zip(ids, bounds)):
        py1, px1, py2, px2 = _largest_component_bounds(labels[y1:y2 + 1, x1:x2 + 1] == label)
        boxes[i] = (y1 + py1, x1 + px1, y1 + py2, x1 + px2)
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_extent) & ((boxes[:, 3] - boxes[:, 1]) > min_extent)
    return boxes[keep], ids[keep]


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to ``1..N`` in ascending order of the old ids (int32 ``HxW``)."""
    ids = instance_ids(labels)
    if len(ids) == int(labels.max(initial=0)):
        return labels.astype(np.int32, copy=False)  # already 1..N
    if ids.size and ids[-1] > 4 * labels.size + 1024:
        return np.searchsorted(np.r_[0, ids], labels).astype(np.int32)
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lookup[labels]


def masks_to_labels(masks: np.ndarray) -> np.ndarray:
    """Bool ``[N,H,W]`` masks -> int32 ``HxW`` label map (mask ``i`` -> ``i + 1``; where
    masks overlap, the later one wins)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got shape {masks.shape}")
    labels = np.zeros(masks.shape[1:], np.int32)
    for i, mask in enumerate(masks):
        labels[mask] = i + 1
    return labels
