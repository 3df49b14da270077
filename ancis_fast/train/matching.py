"""Assigning ground-truth boxes to SSD priors (spec §7)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from ..boxes import box_iou, encode, priors_to_boxes


def match_priors(gt_boxes: Tensor, priors: Tensor, iou_thresh: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Match one image's boxes to the priors.

    Every prior takes the box it overlaps most; every box also claims its best prior
    (forced, whatever the IoU; when two boxes claim the same prior the later box wins,
    as in the release). Priors whose best IoU is below ``iou_thresh`` are background.

    Args:
        gt_boxes: ``[M,4]`` (y1,x1,y2,x2) input pixels, positive extents.
        priors: ``[P,4]`` (cy,cx,h,w) input pixels.
    Returns:
        ``loc_targets [P,4]`` (encoded offsets; zeros where unmatched) and
        ``labels [P]`` int64 (0 background, 1 cell).
    """
    num_priors = priors.shape[0]
    if gt_boxes.numel() == 0:
        return priors.new_zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.long, device=priors.device)
    gt_boxes = gt_boxes.to(priors)
    iou = box_iou(gt_boxes, priors_to_boxes(priors))  # [M, P]
    best_iou, best_gt = iou.max(dim=0)
    best_prior = iou.argmax(dim=1)  # [M]
    claim = torch.full((num_priors,), -1, dtype=torch.long, device=priors.device)
    claim.scatter_reduce_(0, best_prior, torch.arange(len(gt_boxes), device=priors.device), reduce="amax")
    forced = claim >= 0
    best_gt = torch.where(forced, claim, best_gt)
    best_iou = torch.where(forced, torch.full_like(best_iou, 2.0), best_iou)
    labels = (best_iou >= iou_thresh).long()
    targets = encode(gt_boxes[best_gt], priors)
    return torch.where(labels[:, None] > 0, targets, torch.zeros_like(targets)), labels


def match_batch(boxes: Sequence[Tensor], priors: Tensor, iou_thresh: float = 0.5) -> Tuple[Tensor, Tensor]:
    """:func:`match_priors` for a batch: ``loc_targets [B,P,4]``, ``labels [B,P]``."""
    matched = [match_priors(b, priors, iou_thresh) for b in boxes]
    return torch.stack([m[0] for m in matched]), torch.stack([m[1] for m in matched])
