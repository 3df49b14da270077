"""Greedy non-maximum suppression: ``nms`` and ``batched_nms``.

Same keep as :func:`torchvision.ops.nms` / :func:`torchvision.ops.batched_nms` on the same
boxes: sorted by descending score (stable: ties keep the lower index first), IoU without
+1, a box is dropped when its IoU with a kept box (of the same class) is *greater* than the
threshold. Boxes are ``(y1, x1, y2, x2)``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import _checks, _native


def _check(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], op: str) -> None:
    _checks.tensor(boxes, "boxes", op)
    _checks.tensor(scores, "scores", op)
    _checks.boxes(boxes, op)
    _checks.floating(boxes, "boxes", op)
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: scores must have shape [{boxes.shape[0]}] to match boxes {list(boxes.shape)}, "
                         f"got {list(scores.shape)}")
    _checks.floating(scores, "scores", op)
    if idxs is None:
        _checks.same_device(op, boxes=boxes, scores=scores)
        return
    _checks.tensor(idxs, "idxs", op)
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: idxs must have shape [{boxes.shape[0]}], got {list(idxs.shape)}")
    _checks.integral(idxs, "idxs", op)
    _checks.same_device(op, boxes=boxes, scores=scores, idxs=idxs)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS.

    Args:
        boxes: ``[N, 4]`` (y1, x1, y2, x2), floating. scores: ``[N]`` floating.
        iou_threshold: drop boxes whose IoU with a kept box is greater than this.
    Returns:
        int64 ``[K]`` indices of the kept boxes, in descending score.
    """
    _check(boxes, scores, None, "nms")
    if _native.use_native("nms", boxes, scores):
        return torch.ops.ancis.nms(boxes, scores, float(iou_threshold))
    return nms_torch(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each class: boxes of different ``idxs`` never suppress each other.

    Args:
        boxes: ``[N, 4]`` (y1, x1, y2, x2), floating. scores: ``[N]`` floating.
        idxs: ``[N]`` integer class of each box.
        iou_threshold: drop boxes whose IoU with a kept box of their class is greater than this.
    Returns:
        int64 ``[K]`` indices of the kept boxes, in descending score (ties: lower index first).
    """
    _check(boxes, scores, idxs, "batched_nms")
    if _native.use_native("batched_nms", boxes, scores, idxs):
        return torch.ops.ancis.batched_nms(boxes, scores, idxs, float(iou_threshold))
    return batched_nms_torch(boxes, scores, idxs, iou_threshold)


def nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Pure-torch fallback of :func:`nms` (same signature and results)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[greedy_torchvision(boxes[order], iou_threshold)]


def batched_nms_torch(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Pure-torch fallback of :func:`batched_nms` (same signature and results)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[greedy_torchvision(boxes[order], iou_threshold, classes=idxs[order])]


def _upcast(boxes: Tensor) -> Tensor:
    return boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes


_BLOCK = 64
# Bit j of a block's 64-bit mask; the sum of distinct bits has no carries, so the int64 sum is
# the exact bit pattern (bit 63 as the sign).
_BITS = torch.tensor([1 << j for j in range(63)] + [-(1 << 63)], dtype=torch.long)
_MASK64 = (1 << 64) - 1


def _suppress_torchvision(best: Tensor, rest: Tensor, iou_threshold: float) -> Tensor:
    """bool ``[k, m]``: IoU(best[i], rest[j]) > threshold with torchvision's arithmetic:
    std::max/std::min argument order, union = (area_i + area_j) - inter, float IoU compared
    with the double threshold."""
    ay1, ax1, ay2, ax2 = best[:, None, :].unbind(-1)
    by1, bx1, by2, bx2 = rest[None, :, :].unbind(-1)
    zero = best.new_zeros(())
    h = torch.where(by2 < ay2, by2, ay2) - torch.where(ay1 < by1, by1, ay1)
    w = torch.where(bx2 < ax2, bx2, ax2) - torch.where(ax1 < bx1, bx1, ax1)
    inter = torch.where(zero < w, w, zero) * torch.where(zero < h, h, zero)
    area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    return (inter / ((area_a + area_b) - inter)).double() > iou_threshold


def _suppress_reference(best: Tensor, rest: Tensor, iou_threshold: float) -> Tensor:
    """bool ``[k, m]`` with the release's arithmetic (reference.nms_greedy): NaN-propagating
    min/max, clamp, union = (area_rest - inter) + area_best, compared in the boxes' dtype."""
    ay1, ax1, ay2, ax2 = best[:, None, :].unbind(-1)
    by1, bx1, by2, bx2 = rest[None, :, :].unbind(-1)
    h = (torch.min(by2, ay2) - torch.max(by1, ay1)).clamp(min=0)
    w = (torch.min(bx2, ax2) - torch.max(bx1, ax1)).clamp(min=0)
    inter = h * w
    area_a, area_b = (ay2 - ay1) * (ax2 - ax1), (by2 - by1) * (bx2 - bx1)
    return inter / ((area_b - inter) + area_a) > iou_threshold


def _bits(flags: Tensor) -> List[int]:
    """bool ``[..., <=64]`` -> Python ints, bit j = flags[..., j]."""
    sums = (flags.long().cpu() * _BITS[: flags.shape[-1]]).sum(dim=-1)
    return [v & _MASK64 for v in sums.reshape(-1).tolist()]


def _greedy(boxes: Tensor, suppress, classes: Optional[Tensor], max_keep: Optional[int]) -> Tensor:
    """Greedy NMS of boxes sorted best first, 64 boxes at a time: the boxes of a block are
    resolved against each other with Python bit masks, then the block's kept boxes suppress
    every later box in one tensor operation. Returns int64 positions of the kept boxes."""
    n = boxes.shape[0]
    removed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep: List[int] = []
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = boxes[start:stop]
        overlap = suppress(block, block)
        if classes is not None:
            overlap &= classes[start:stop, None] == classes[None, start:stop]
        rows = _bits(torch.triu(overlap, diagonal=1))
        gone = _bits(removed[start:stop])[0]
        kept: List[int] = []
        for i in range(stop - start):
            if max_keep is not None and len(keep) + len(kept) >= max_keep:
                break
            if not (gone >> i) & 1:
                kept.append(i)
                gone |= rows[i]
        keep.extend(start + i for i in kept)
        if max_keep is not None and len(keep) >= max_keep:
            break
        if kept and stop < n:
            later = suppress(block[kept], boxes[stop:])
            if classes is not None:
                later &= classes[start:stop][kept, None] == classes[None, stop:]
            removed[stop:] |= later.any(dim=0)
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def greedy_torchvision(boxes: Tensor, iou_threshold: float, classes: Optional[Tensor] = None) -> Tensor:
    """Greedy NMS of boxes sorted best first, with torchvision's IoU arithmetic; boxes of
    different ``classes`` never suppress each other. Returns int64 positions of the kept
    boxes, ascending."""
    return _greedy(_upcast(boxes), lambda a, b: _suppress_torchvision(a, b, iou_threshold), classes, None)


def greedy_reference(boxes: Tensor, iou_threshold: float, max_keep: Optional[int] = None) -> Tensor:
    """Greedy NMS of boxes sorted best first, with the release's arithmetic
    (reference.nms_greedy), stopping after ``max_keep`` kept boxes. Returns int64 positions
    of the kept boxes, ascending."""
    return _greedy(boxes, lambda a, b: _suppress_reference(a, b, iou_threshold), None, max_keep)
