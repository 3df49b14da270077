"""The release's ``Detect`` step (spec §4) for a whole batch in one call.

Fused softmax + strict ``>`` threshold + pre-NMS top-k + per-class greedy NMS + max_det.
Results are identical to ``reference.detect`` followed by ``reference.detections_of_image``
for every image, quirks included (the 200-candidate cap; ``pre_nms_top_k=None`` lifts it).
"""
# No `from __future__ import annotations`: TorchScript reads the wrappers' annotations.

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import boxes as _boxes
from . import _checks, _native
from .decode import VARIANCES
from .decode import _check as _check_decode
from .nms import greedy_reference

#: Per image: boxes [K, 4] (y1, x1, y2, x2) input pixels, scores [K], labels [K] int64.
Detections = Tuple[Tensor, Tensor, Tensor]


def _check(locs: Tensor, conf_logits: Tensor, priors: Tensor, pre_nms_top_k: Optional[int], max_det: int,
           variances: Sequence[float]) -> None:
    op = "detect"
    _checks.tensor(locs, "locs", op)
    _checks.tensor(conf_logits, "conf_logits", op)
    if locs.dim() != 3 or locs.shape[2] != 4:
        raise ValueError(f"{op}: locs must have shape [B, P, 4], got {list(locs.shape)}")
    if conf_logits.dim() != 3 or tuple(conf_logits.shape[:2]) != tuple(locs.shape[:2]) or conf_logits.shape[2] < 1:
        raise ValueError(f"{op}: conf_logits must have shape [{locs.shape[0]}, {locs.shape[1]}, num_classes] "
                         f"to match locs, got {list(conf_logits.shape)}")
    _check_decode(locs, priors, variances, op)
    _checks.floating(conf_logits, "conf_logits", op)
    if conf_logits.dtype != locs.dtype:
        raise ValueError(f"{op}: conf_logits dtype {conf_logits.dtype} differs from locs dtype {locs.dtype}")
    _checks.same_device(op, locs=locs, conf_logits=conf_logits, priors=priors)
    if max_det < 0:
        raise ValueError(f"{op}: max_det must be >= 0, got {max_det}")
    if pre_nms_top_k is not None and pre_nms_top_k < 0:
        raise ValueError(f"{op}: pre_nms_top_k must be >= 0 or None, got {pre_nms_top_k}")


def detect_padded(locs: Tensor, conf_logits: Tensor, priors: Tensor, conf_thresh: float = 0.3,
                  nms_thresh: float = 0.3, pre_nms_top_k: Optional[int] = 200, max_det: int = 500,
                  variances: Tuple[float, float] = VARIANCES) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`detect` with fixed-size outputs (no host synchronisation, export-friendly).

    Args:
        locs: ``[B, P, 4]`` regression outputs. conf_logits: ``[B, P, nc]`` raw class logits,
            same dtype as ``locs``. priors: ``[P, 4]`` (cy, cx, h, w) in input pixels.
        conf_thresh: a class score must be strictly greater to be a candidate.
        nms_thresh: greedy NMS drops boxes whose IoU with a kept box is greater.
        pre_nms_top_k: candidates per class before NMS (the release's 200); None: all.
        max_det: detections kept per class (the release's ``top_k`` = 500).
    Returns:
        ``boxes [B, M, 4]`` (y1, x1, y2, x2), ``scores [B, M]`` (both in the dtype of
        ``locs``), ``labels [B, M]`` int64 and ``counts [B]`` int64, with
        ``M = (nc - 1) * max_det``; image ``b`` has ``counts[b]`` detections sorted by
        descending score (stable: class order, then rank), zero rows after them.

    Scripted, compiled or exported, this is ``torch.ops.ancis.detect`` unchecked (see
    :func:`~ancis_fast.ops._native.tracing`).
    """
    if _native.tracing():
        return torch.ops.ancis.detect(locs, conf_logits, priors, conf_thresh, nms_thresh, pre_nms_top_k, max_det,
                                      [variances[0], variances[1]])
    return _detect_padded_checked(locs, conf_logits, priors, conf_thresh, nms_thresh, pre_nms_top_k, max_det,
                                  variances)


@torch.jit.unused
def _detect_padded_checked(locs: Tensor, conf_logits: Tensor, priors: Tensor, conf_thresh: float, nms_thresh: float,
                           pre_nms_top_k: Optional[int], max_det: int,
                           variances: Tuple[float, float]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    _check(locs, conf_logits, priors, pre_nms_top_k, max_det, variances)
    args = (float(conf_thresh), float(nms_thresh), None if pre_nms_top_k is None else int(pre_nms_top_k),
            int(max_det), [float(v) for v in variances])
    if _native.use_native("detect", locs, conf_logits, priors):
        return torch.ops.ancis.detect(locs, conf_logits, priors, *args)
    return detect_torch(locs, conf_logits, priors, *args)


def detect(locs: Tensor, conf_logits: Tensor, priors: Tensor, conf_thresh: float = 0.3, nms_thresh: float = 0.3,
           pre_nms_top_k: Optional[int] = 200, max_det: int = 500,
           variances: Sequence[float] = VARIANCES) -> List[Detections]:
    """Detections of every image of the batch (arguments as :func:`detect_padded`).

    Returns:
        per image ``(boxes [K, 4], scores [K], labels [K])``: (y1, x1, y2, x2) input pixels,
        descending score, labels int64 >= 1; exactly what ``reference.detections_of_image``
        gives for ``reference.detect(..., top_k=max_det, pre_nms_top_k=pre_nms_top_k)``.
    """
    boxes, scores, labels, counts = detect_padded(locs, conf_logits, priors, conf_thresh, nms_thresh,
                                                  pre_nms_top_k, max_det, variances)
    return [(boxes[b, :n], scores[b, :n], labels[b, :n]) for b, n in enumerate(counts.tolist())]


def detect_torch(locs: Tensor, conf_logits: Tensor, priors: Tensor, conf_thresh: float = 0.3,
                 nms_thresh: float = 0.3, pre_nms_top_k: Optional[int] = 200, max_det: int = 500,
                 variances: Sequence[float] = VARIANCES) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pure-torch fallback of :func:`detect_padded` (same signature and results)."""
    batch, _, num_classes = conf_logits.shape
    slots = (num_classes - 1) * max_det
    out_boxes = locs.new_zeros((batch, slots, 4))
    out_scores = locs.new_zeros((batch, slots))
    out_labels = torch.zeros((batch, slots), dtype=torch.long, device=locs.device)
    counts = torch.zeros((batch,), dtype=torch.long, device=locs.device)
    if slots == 0 or locs.shape[1] == 0:
        return out_boxes, out_scores, out_labels, counts
    probs = torch.softmax(conf_logits, dim=-1)
    variances = (float(variances[0]), float(variances[1]))
    for b in range(batch):
        rows, labels = [], []
        for cls in range(1, num_classes):
            kept = _detect_class(locs[b], probs[b, :, cls], priors, conf_thresh, nms_thresh, pre_nms_top_k,
                                 max_det, variances)
            if kept is not None:
                rows.append(kept)
                labels.append(torch.full((kept.shape[0],), cls, dtype=torch.long, device=locs.device))
        if not rows:
            continue
        rows_t, labels_t = torch.cat(rows), torch.cat(labels)
        order = torch.sort(rows_t[:, 0], descending=True, stable=True).indices
        n = order.numel()
        out_scores[b, :n] = rows_t[order, 0]
        out_boxes[b, :n] = rows_t[order, 1:]
        out_labels[b, :n] = labels_t[order]
        counts[b] = n
    return out_boxes, out_scores, out_labels, counts


def _detect_class(locs: Tensor, scores: Tensor, priors: Tensor, conf_thresh: float, nms_thresh: float,
                  pre_nms_top_k: Optional[int], max_det: int, variances: Tuple[float, float]) -> Optional[Tensor]:
    """One image, one class: rows ``(score, y1, x1, y2, x2)`` in the locs dtype, or None."""
    candidates = torch.nonzero(scores > conf_thresh).squeeze(1)
    if candidates.numel() == 0:
        return None
    order = torch.sort(scores[candidates], descending=True, stable=True).indices
    if pre_nms_top_k is not None:
        order = order[:pre_nms_top_k]
    chosen = candidates[order]
    # Decoding only the survivors gives the same bits: decode is elementwise.
    boxes = _boxes.decode(locs[chosen], priors[chosen], variances)
    keep = greedy_reference(boxes, nms_thresh, max_keep=max_det)
    rows = torch.cat([scores[chosen[keep], None].to(locs.dtype), boxes[keep].to(locs.dtype)], dim=1)
    rows = rows[rows[:, 0] > 0]
    return rows if rows.shape[0] else None
