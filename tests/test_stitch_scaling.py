"""Stitching with a spatial index (ancis_fast.tiling): the same cells as an all-pairs
version of the rules on random overlapping views, and work that grows with the cells."""
import cv2
import numpy as np
import pytest

from ancis_fast import Instances
from ancis_fast.masks import PatchMasks
from ancis_fast.tiling import DUPLICATE_COVER, DUPLICATE_IOU, EDGE_TOUCH, StitchWork, stitch, tile_windows

TILE, OVERLAP = 256, 64


def random_cells(rng, height, width, per_px=1 / 2500):
    """``(y, x, patch)`` of random ellipses (5 % wider than the overlap), free to overlap."""
    cells = []
    for _ in range(int(height * width * per_px)):
        ry, rx = (int(v) for v in rng.integers(4, 16, 2))
        if rng.random() < 0.05:
            rx = int(rng.integers(OVERLAP // 2 + 4, 60))
        patch = np.zeros((2 * ry + 1, 2 * rx + 1), np.uint8)
        cv2.ellipse(patch, (rx, ry), (rx, ry), 0, 0, 360, 1, -1)
        cells.append((int(rng.integers(-ry, height - ry)), int(rng.integers(-rx, width - rx)), patch.astype(bool)))
    return cells


def views_of(rng, cells, window):
    """What a noisy segmenter might report for one tile (tile pixels): each cell that
    reaches the tile clipped to it, sometimes dilated or eroded, sometimes twice (shifted),
    with a random score."""
    y0, x0, y1, x1 = window
    patches, origins, boxes, scores = [], [], [], []
    for y, x, patch in cells:
        shapes = [(y, x, patch)]
        if rng.random() < 0.25:
            shapes.append((y + int(rng.integers(-3, 4)), x + int(rng.integers(-3, 4)), patch))
        if rng.random() < 0.25:
            grow = np.pad(patch, 2).astype(np.uint8)
            grow = (cv2.dilate if rng.random() < 0.5 else cv2.erode)(grow, np.ones((3, 3), np.uint8)).astype(bool)
            shapes.append((y - 2, x - 2, grow))
        for sy, sx, shape in shapes:
            top, left = max(sy, y0), max(sx, x0)
            bottom, right = min(sy + shape.shape[0], y1), min(sx + shape.shape[1], x1)
            if bottom <= top or right <= left:
                continue
            piece = shape[top - sy : bottom - sy, left - sx : right - sx]
            if not piece.any():
                continue
            patches.append(piece)
            origins.append((top - y0, left - x0))
            boxes.append((top - y0 + rng.normal(0, 1), left - x0 + rng.normal(0, 1), bottom - y0, right - x0))
            scores.append(rng.random())
    order = np.argsort(-np.array(scores), kind="stable")
    masks = PatchMasks([patches[i] for i in order], np.array(origins, np.int64).reshape(-1, 2)[order],
                       (y1 - y0, x1 - x0))
    return Instances(np.array(boxes, np.float32).reshape(-1, 4)[order], np.array(scores)[order], masks)


def random_layout(seed, height, width):
    rng = np.random.default_rng(seed)
    cells = random_cells(rng, height, width)
    ends = np.array([(y + p.shape[0], x + p.shape[1]) for y, x, p in cells]).reshape(-1, 2)
    starts = np.array([(y, x) for y, x, _ in cells]).reshape(-1, 2)
    windows = tile_windows(height, width, TILE, OVERLAP)
    found = []
    for y0, x0, y1, x1 in windows:
        near = np.flatnonzero((starts[:, 0] < y1) & (starts[:, 1] < x1) & (ends[:, 0] > y0) & (ends[:, 1] > x0))
        found.append(views_of(rng, [cells[i] for i in near], (y0, x0, y1, x1)))
    return found, windows


# ------------------------------------------------------------------ the rules, all pairs, dense masks

def margin(mask, window, size):
    ys, xs = np.nonzero(mask)
    y1, x1, y2, x2 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    if y1 < window[0] or x1 < window[1] or y2 > window[2] or x2 > window[3]:
        return -1.0
    gaps = [g for g, inner in ((y1 - window[0], window[0] > 0), (x1 - window[1], window[1] > 0),
                               (window[2] - y2, window[2] < size[0]), (window[3] - x2, window[3] < size[1])) if inner]
    return float(min(gaps)) if gaps else np.inf


def extent(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def box_overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(a, b):
    ea, eb = extent(a), extent(b)
    if not box_overlap(ea, eb):
        return 0.0
    shared = (a & b).sum()
    return shared / (a.sum() + b.sum() - shared)


def all_pairs_stitch(found, windows, size):
    """The module docstring's rules with every candidate compared with every other."""
    candidates = []
    for tile, (window, views) in enumerate(zip(windows, found)):
        y0, x0, y1, x1 = window
        mine = []
        for i in range(len(views)):
            mask = np.zeros(size, bool)
            mask[y0:y1, x0:x1] = views.mask_patches.mask(i)[: y1 - y0, : x1 - x0]
            if mask.any():
                box = np.minimum(views.boxes[i], [y1 - y0, x1 - x0] * 2) + np.array([y0, x0, y0, x0], np.float32)
                mine.append(dict(score=float(views.scores[i]), box=box, mask=mask, tile=tile,
                                 margin=margin(mask, window, size)))
        mine.sort(key=lambda c: -c["score"])
        kept = []
        for cand in mine:
            if all(iou(cand["mask"], k["mask"]) <= DUPLICATE_IOU for k in kept):
                kept.append(cand)
        candidates += kept
    candidates = [c for c in candidates if c["margin"] > EDGE_TOUCH or not any(
        margin(c["mask"], w, size) > EDGE_TOUCH for k, w in enumerate(windows) if k != c["tile"])]
    order = sorted(candidates, key=lambda c: (-c["margin"], -c["score"]))
    taken = []
    for cand in order:
        hit = covered(cand, [t for t in taken if t["tile"] != cand["tile"]])
        if hit is None:
            hit = next((t for t in taken if iou(cand["mask"], t["mask"]) > DUPLICATE_IOU), None)
        if hit is None:
            taken.append(cand)
        elif cand["margin"] <= EDGE_TOUCH and hit["margin"] <= EDGE_TOUCH:
            hit["mask"] = hit["mask"] | cand["mask"]
            hit["box"] = np.concatenate([np.minimum(hit["box"][:2], cand["box"][:2]),
                                         np.maximum(hit["box"][2:], cand["box"][2:])])
    return sorted(taken, key=lambda c: -c["score"])


def covered(cand, others):
    """The taken cell sharing most of ``cand``'s pixels, once the shares (largest box
    overlap first) pass :data:`DUPLICATE_COVER` of them; else ``None``."""
    box = extent(cand["mask"])
    ranked = sorted(((box_overlap(box, extent(t["mask"])), k) for k, t in enumerate(others)), key=lambda p: -p[0])
    shared, total = [], 0
    for overlap, k in ranked:
        if overlap == 0:
            break
        shared.append(((cand["mask"] & others[k]["mask"]).sum(), k))
        total += shared[-1][0]
        if total > DUPLICATE_COVER * cand["mask"].sum():
            return others[max(shared)[1]]
    return None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_indexed_stitching_equals_the_all_pairs_rules(seed):
    size = (448, 640)
    found, windows = random_layout(seed, *size)
    got = stitch(found, windows, size)
    want = all_pairs_stitch(found, windows, size)
    assert len(want) > 60 and len(got) == len(want)
    np.testing.assert_array_equal(got.scores, np.array([c["score"] for c in want], np.float32))
    np.testing.assert_array_equal(got.boxes, np.array([c["box"] for c in want], np.float32))
    np.testing.assert_array_equal(got.masks, np.array([c["mask"] for c in want]))


def test_stitching_work_grows_with_the_cells():
    """The same density on 4x the area: about 4x the cells and at most 5x the compared
    pairs (comparing every candidate with every other would be 16x)."""
    work, cells = [], []
    for side in (1984, 3904):  # 192 k + 64 px: the last tiles overlap by 64 px too
        found, windows = random_layout(5, side, side)
        counted = StitchWork()
        cells.append(len(stitch(found, windows, (side, side), counted)))
        work.append(counted.pairs)
    assert 3.5 < cells[1] / cells[0] < 4.5
    assert work[1] <= 5 * work[0], (work, cells)
    assert work[1] < 30 * cells[1]  # a few dozen neighbours per cell, whatever the image
