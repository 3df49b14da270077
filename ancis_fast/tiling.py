"""Segmenting images larger than the network input, tile by tile, so that every cell is
segmented by a tile that holds all of it.

Tiles of ``tile x tile`` pixels overlap by ``overlap``. Along one axis, a cell no wider
than the overlap lies whole inside at least one of two neighbouring tiles, so with
``overlap`` at least the largest cell every cell has a tile that sees all of it. Stitching
takes each cell from its *best view*:

1. every tile's cells are candidates; a candidate whose mask reaches within
   :data:`EDGE_TOUCH` px of one of its tile's inner edges (an edge that is not the image
   border) is *cut* by that tile, and is dropped when another tile holds its whole box
   away from that tile's inner edges (the cell is there in full);
2. within one tile, of two cells whose masks overlap by IoU over :data:`DUPLICATE_IOU`
   the lower score is dropped (the model's box NMS leaves such pairs: boxes overlapping
   by at most its threshold can hold masks that overlap more);
3. candidates are taken in order of their margin (the distance from the mask to the
   nearest inner edge of its tile; largest first, ties to the higher score), and one is
   a duplicate, and dropped, when more than :data:`DUPLICATE_COVER` of its pixels already
   belong to cells taken from *other* tiles (the same cell seen again, whole or cut, or
   split or merged differently), or its mask IoU with a taken cell exceeds
   :data:`DUPLICATE_IOU`. A cut duplicate of a cut cell is the other part of a cell wider
   than the overlap (no tile holds it whole): the two parts are joined.

So, joined parts aside, no two stitched cells overlap by mask IoU over :data:`DUPLICATE_IOU`.

The work grows with the cells, not with their square: a candidate is only ever compared
with those whose boxes overlap its own (a bucket grid, :class:`BoxIndex`), and a
candidate away from its tile's inner edges that reaches no other tile is kept without
any comparison (:meth:`WindowGrid.sort_out`): only the cells near the seams are decided
together (:func:`best_views`), and any grouping of those that keeps overlapping boxes
together decides them alike, which is how :mod:`ancis_fast.distributed` decides the seams
of a huge image in parallel.

Where the seams fall changes which tile a cell comes from, not whether it is whole.
Tiles smaller than ``tile`` (an image smaller than a tile along an axis) are padded with
the tile's median to ``tile x tile``, so the network always sees them at native
resolution. Memory is bounded by one tile plus the cells' mask patches.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .instances import Instances
from .masks import PatchMasks, patch_intersection, tight_patch

EDGE_TOUCH = 2  # px: a mask this close to a tile's inner edge is cut by it
DUPLICATE_COVER = 0.5  # share of a candidate's pixels already taken from other tiles that makes it a duplicate
DUPLICATE_IOU = 0.3  # mask IoU with a taken cell that makes a candidate a duplicate (the model's NMS threshold)

#: ``on_tile(done, total)``, called after each tile (progress bars)
TileCallback = Callable[[int, int], None]
Window = Tuple[int, int, int, int]  # (y1, x1, y2, x2) of a tile in image pixels


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles covering ``[0, length)``; the last tile ends at ``length``."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def tile_windows(height: int, width: int, tile: int, overlap: int) -> List[Window]:
    """``(y1, x1, y2, x2)`` of every tile of an ``height x width`` image, row by row."""
    return [(y, x, min(y + tile, height), min(x + tile, width))
            for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


@dataclass
class Candidate:
    """One tile's view of a cell, in image pixels."""

    score: float
    box: np.ndarray  # detection box (y1, x1, y2, x2), image pixels
    patch: np.ndarray  # tight bool mask patch
    origin: Tuple[int, int]  # patch's top-left (y, x), image pixels
    label: int
    tile: int  # index of the tile it was found in
    margin: float  # px from the mask to its tile's nearest inner edge (inf: none)
    rank: int = 0  # position among its tile's candidates (by descending score): breaks ties

    @property
    def extent(self) -> Tuple[int, int, int, int]:
        """The mask's bounding box ``(y1, x1, y2, x2)``, end-exclusive."""
        return (self.origin[0], self.origin[1], self.origin[0] + self.patch.shape[0],
                self.origin[1] + self.patch.shape[1])

    @property
    def area(self) -> int:
        return int(self.patch.sum())


@dataclass
class StitchWork:
    """How much pairwise work stitching did: ``pairs`` counts the (cell, cell) and (cell,
    tile) pairs whose boxes were compared; with the spatial index it grows with the cells
    (times their crowding), not with their square."""

    pairs: int = 0


class BoxIndex:
    """Boxes ``(y1, x1, y2, x2)`` (end-exclusive, image pixels) filed in the buckets of a
    square grid of ``side`` px, so that finding the boxes that overlap one looks only at
    the buckets it spans. A key added again with a grown box keeps its old buckets too
    (the box it is compared with is always the latest)."""

    def __init__(self, side: int, work: Optional[StitchWork] = None):
        self.side = max(1, int(side))
        self.work = work
        self._buckets: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        self._boxes: Dict[int, Tuple[int, int, int, int]] = {}

    def add(self, key: int, box: Sequence[int]) -> None:
        box = tuple(int(v) for v in box)
        self._boxes[key] = box
        for bucket in self._spanned(box):
            self._buckets[bucket].append(key)

    def overlapping(self, box: Sequence[int]) -> np.ndarray:
        """Keys (ascending) of the boxes that share a positive area with ``box``."""
        box = tuple(int(v) for v in box)
        near = set()
        for bucket in self._spanned(box):
            near.update(self._buckets.get(bucket, ()))
        if self.work is not None:
            self.work.pairs += len(near)
        return np.array(sorted(k for k in near if _boxes_overlap(self._boxes[k], box)), np.int64)

    def _spanned(self, box: Tuple[int, int, int, int]) -> List[Tuple[int, int]]:
        side = self.side
        top, left = box[0] // side, box[1] // side
        bottom, right = (max(box[2], box[0] + 1) - 1) // side, (max(box[3], box[1] + 1) - 1) // side
        if top == bottom and left == right:
            return [(top, left)]
        return [(by, bx) for by in range(top, bottom + 1) for bx in range(left, right + 1)]


def _boxes_overlap(a: Sequence[int], b: Sequence[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _bucket_side(candidates: Sequence[Candidate]) -> int:
    """Twice the median mask side: most masks span one to four buckets."""
    if not candidates:
        return 1
    return 2 * int(np.median([max(c.patch.shape) for c in candidates])) + 1


class WindowGrid:
    """The tiles of one image (``(y1, x1, y2, x2)`` each) with a spatial index: which
    tiles a mask reaches, and where a candidate's fate is decided."""

    def __init__(self, windows: Sequence[Window], image_size: Tuple[int, int], work: Optional[StitchWork] = None):
        self.windows = [tuple(int(v) for v in w) for w in windows]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        side = max([max(w[2] - w[0], w[3] - w[1]) for w in self.windows] + [1])
        self._index = BoxIndex(side, work)
        for key, window in enumerate(self.windows):
            self._index.add(key, window)

    def reaching(self, extent: Sequence[int]) -> np.ndarray:
        """Indices of the tiles that ``extent`` overlaps."""
        return self._index.overlapping(extent)

    def sort_out(self, candidates: Sequence[Candidate]) -> Tuple[List[Candidate], List[Candidate]]:
        """``(settled, contested)``: a candidate away from its tile's inner edges that
        reaches no other tile can meet no other tile's view, so it is kept (settled); a
        candidate cut by its tile whose pixels another tile holds away from its edges is
        dropped (the cell is there in full); the rest are decided with the other tiles'
        candidates (:func:`best_views`)."""
        settled, contested = [], []
        for cand in candidates:
            others = [k for k in self.reaching(cand.extent) if k != cand.tile]
            if cand.margin > EDGE_TOUCH and not others:
                settled.append(cand)
            elif cand.margin > EDGE_TOUCH or not any(
                    _margin(cand.extent, self.windows[k], self.image_size) > EDGE_TOUCH for k in others):
                contested.append(cand)
        return settled, contested


def predict_tiled(image: np.ndarray, predict_tile: Callable[[np.ndarray], Instances], tile: int = 512,
                  overlap: int = 64, on_tile: Optional[TileCallback] = None) -> Instances:
    """Segment ``image`` (``HxW[xC]``) tile by tile with ``predict_tile`` and stitch.

    Args:
        predict_tile: segments one ``tile x tile`` array; returns Instances in tile pixels.
        tile, overlap: tile side and overlap in image pixels; ``overlap`` should be at
            least the largest cell's diameter (see the module docstring).
        on_tile: called as ``on_tile(done, total)`` after each tile.
    Returns:
        Instances in image pixels, sorted by descending score; cells without a mask pixel
        are left out.
    """
    height, width = image.shape[:2]
    windows = tile_windows(height, width, tile, overlap)
    found: List[Instances] = []
    for done, (y0, x0, y1, x1) in enumerate(windows, start=1):
        found.append(predict_tile(pad_to_tile(image[y0:y1, x0:x1], tile)))
        if on_tile is not None:
            on_tile(done, len(windows))
    return stitch(found, windows, (height, width))


def stitch(found: Sequence[Instances], windows: Sequence[Tuple[int, int, int, int]],
           image_size: Tuple[int, int], work: Optional[StitchWork] = None) -> Instances:
    """The cells of tiles ``found[i]`` (Instances in the pixels of ``windows[i]``, ``(y0, x0,
    y1, x1)`` as :func:`tile_windows` lays them out) as one Instances of the ``image_size``
    image, by the rules of the module docstring. ``work``, if given, counts the pairs of
    boxes compared."""
    grid = WindowGrid(windows, image_size, work)
    settled, contested = [], []
    for index, (window, tile_found) in enumerate(zip(windows, found)):
        mine, shared = grid.sort_out(window_candidates(tile_found, index, window, image_size, work))
        settled += mine
        contested += shared
    return as_instances(settled + best_views(contested, work), image_size)


def as_instances(cells: Sequence[Candidate], image_size: Tuple[int, int]) -> Instances:
    """Kept candidates as Instances, by descending score (ties: the greedy order of
    :func:`best_views`, so the result does not depend on how the cells were grouped)."""
    kept = sorted(cells, key=lambda c: (-c.score, -c.margin, c.tile, c.rank))
    if not kept:
        return Instances.empty(image_size)
    masks = PatchMasks([c.patch for c in kept], np.array([c.origin for c in kept]), image_size)
    return Instances(np.stack([c.box for c in kept]), np.array([c.score for c in kept]), masks,
                     np.array([c.label for c in kept]))


def pad_to_tile(window: np.ndarray, tile: int) -> np.ndarray:
    """``window`` padded at the bottom and right to ``tile x tile`` with its median (per
    channel): an image smaller than a tile is segmented at native resolution too."""
    pad_y, pad_x = tile - window.shape[0], tile - window.shape[1]
    if pad_y <= 0 and pad_x <= 0:
        return window
    fill = np.median(window.reshape(-1, *window.shape[2:]), axis=0).astype(window.dtype)
    out = np.empty((max(tile, window.shape[0]), max(tile, window.shape[1]), *window.shape[2:]), window.dtype)
    out[...] = fill
    out[: window.shape[0], : window.shape[1]] = window
    return out


def window_candidates(found: Instances, index: int, window: Window, image_size: Tuple[int, int],
                      work: Optional[StitchWork] = None) -> List[Candidate]:
    """``found`` (tile pixels) as candidates in image pixels; masks clipped to the window
    (the padding), cells without a pixel left out, and of two whose mask IoU exceeds
    :data:`DUPLICATE_IOU` the lower score dropped."""
    y0, x0 = window[0], window[1]
    h, w = window[2] - y0, window[3] - x0
    out = []
    for i in range(len(found)):
        (py, px), patch = found.mask_patches.origins[i], found.mask_patches.patches[i]
        inside = patch[: max(0, h - py), : max(0, w - px)]
        patch, (ty, tx) = (patch, (0, 0)) if inside.shape == patch.shape and _is_tight(patch) else tight_patch(inside)
        if not patch.size:
            continue
        origin = (int(py + ty + y0), int(px + tx + x0))
        box = np.minimum(found.boxes[i], [h, w, h, w]) + np.array([y0, x0, y0, x0], np.float32)
        extent = (origin[0], origin[1], origin[0] + patch.shape[0], origin[1] + patch.shape[1])
        out.append(Candidate(float(found.scores[i]), box, patch, origin, int(found.labels[i]), index,
                             _margin(extent, window, image_size)))
    kept = _without_tile_duplicates(out, work)
    for rank, cand in enumerate(kept):
        cand.rank = rank
    return kept


def _is_tight(patch: np.ndarray) -> bool:
    """A non-empty patch with a set pixel on each of its four borders (nothing to crop)."""
    return bool(patch.size and patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any())


def _without_tile_duplicates(candidates: List[Candidate], work: Optional[StitchWork]) -> List[Candidate]:
    """One tile's candidates less those whose mask IoU with a higher-scoring one exceeds
    :data:`DUPLICATE_IOU`."""
    order = sorted(candidates, key=lambda c: -c.score)
    e = np.array([c.extent for c in order], np.int64).reshape(-1, 4)
    index = BoxIndex(_bucket_side(order), work)
    kept = []
    for i, cand in enumerate(order):
        near = index.overlapping(e[i])
        if not len(near) or _duplicate_of(cand, order, near, _box_overlaps(e[near], e[i])) is None:
            kept.append(cand)
            index.add(i, e[i])
    return kept


def _box_overlaps(extents: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Pixels of ``extent`` that each of ``extents`` covers."""
    overlap_h = np.minimum(extents[:, 2], extent[2]) - np.maximum(extents[:, 0], extent[0])
    overlap_w = np.minimum(extents[:, 3], extent[3]) - np.maximum(extents[:, 1], extent[1])
    return np.maximum(overlap_h, 0) * np.maximum(overlap_w, 0)


def _duplicate_of(cand: Candidate, order: List[Candidate], near: np.ndarray, bound: np.ndarray) -> Optional[int]:
    """Index of a candidate of ``near`` (``bound``: their box overlaps with ``cand``)
    whose mask IoU with ``cand`` exceeds :data:`DUPLICATE_IOU`, else ``None``."""
    area = cand.area
    for k in near[bound > DUPLICATE_IOU * area]:  # IoU > t needs an intersection > t * area
        shared = _intersection(cand, order[k])
        if shared > DUPLICATE_IOU * (area + order[k].area - shared):
            return int(k)
    return None


def _margin(extent: Tuple[int, int, int, int], window: Window, image_size: Tuple[int, int]) -> float:
    """Distance (px) from a mask's ``extent`` to the nearest inner edge of ``window``
    (negative when it leaves the window); ``inf`` when the window has no inner edge."""
    gaps = []
    if window[0] > 0:
        gaps.append(extent[0] - window[0])
    if window[1] > 0:
        gaps.append(extent[1] - window[1])
    if window[2] < image_size[0]:
        gaps.append(window[2] - extent[2])
    if window[3] < image_size[1]:
        gaps.append(window[3] - extent[3])
    inside = window[0] <= extent[0] and window[1] <= extent[1] and extent[2] <= window[2] and extent[3] <= window[3]
    return (float(min(gaps)) if gaps else np.inf) if inside else -1.0


def best_views(candidates: Sequence[Candidate], work: Optional[StitchWork] = None) -> List[Candidate]:
    """Greedy in order of margin (then score): keep a candidate unless more than
    :data:`DUPLICATE_COVER` of its pixels are already taken from other tiles, or its mask
    IoU with a taken cell exceeds :data:`DUPLICATE_IOU`. A cut duplicate of a cut cell is
    the other part of a cell wider than the overlap: it is joined to it.

    A candidate is compared only with the taken ones whose boxes overlap its own (a
    :class:`BoxIndex`), so any grouping of the candidates that keeps overlapping boxes
    together decides each of them as this whole list does."""
    order = sorted(candidates, key=lambda c: (-c.margin, -c.score, c.tile, c.rank))
    e = np.array([c.extent for c in order], np.int64).reshape(-1, 4)
    tiles = np.array([c.tile for c in order], np.int64)
    index = BoxIndex(_bucket_side(order), work)
    kept = np.zeros(len(order), bool)
    for i, cand in enumerate(order):
        near = index.overlapping(e[i])
        taken = None
        if len(near):
            bound = _box_overlaps(e[near], e[i])
            other = tiles[near] != cand.tile
            taken = _covered_by(cand, order, near[other], bound[other])
            if taken is None:
                taken = _duplicate_of(cand, order, near, bound)
        if taken is None:
            kept[i] = True
            index.add(i, e[i])
        elif cand.margin <= EDGE_TOUCH and order[taken].margin <= EDGE_TOUCH:
            order[taken] = _joined(order[taken], cand)
            e[taken] = order[taken].extent
            index.add(taken, e[taken])
    return [c for c, keep in zip(order, kept) if keep]


def _covered_by(cand: Candidate, order: List[Candidate], near: np.ndarray, bound: np.ndarray) -> Optional[int]:
    """When more than :data:`DUPLICATE_COVER` of ``cand``'s pixels belong to the candidates
    ``near`` (``bound``: their box overlaps with it), the one sharing most, else ``None``."""
    limit = DUPLICATE_COVER * cand.area
    if bound.sum() <= limit:  # the shared pixels cannot reach the limit: no pixel work
        return None
    shared, covered = [], 0
    for k in near[np.argsort(-bound, kind="stable")]:
        shared.append((_intersection(cand, order[k]), k))
        covered += shared[-1][0]
        if covered > limit:
            return int(max(shared)[1])
    return None


def _joined(a: Candidate, b: Candidate) -> Candidate:
    """``a`` with ``b``'s mask pixels and box added (two tiles' parts of one cell)."""
    top, left = min(a.origin[0], b.origin[0]), min(a.origin[1], b.origin[1])
    bottom, right = max(a.extent[2], b.extent[2]), max(a.extent[3], b.extent[3])
    patch = np.zeros((bottom - top, right - left), bool)
    for part in (a, b):
        patch[part.origin[0] - top : part.extent[2] - top, part.origin[1] - left : part.extent[3] - left] |= part.patch
    box = np.concatenate([np.minimum(a.box[:2], b.box[:2]), np.maximum(a.box[2:], b.box[2:])])
    return Candidate(a.score, box, patch, (top, left), a.label, a.tile, a.margin, a.rank)


def _intersection(a: Candidate, b: Candidate) -> int:
    """Pixels two candidates' masks share."""
    return patch_intersection(a.patch, a.origin, b.patch, b.origin)
