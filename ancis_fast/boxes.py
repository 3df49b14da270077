"""Box geometry shared by every stage: the SSD box coder, IoU and format conversions.

Boxes are `(y1, x1, y2, x2)` float pixels everywhere inside ancis_fast; priors are
`(cy, cx, h, w)`. Conversion to torchvision's `(x1, y1, x2, y2)` happens only at the
boundary, through :func:`yxyx_to_xyxy`.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

VARIANCES: Tuple[float, float] = (0.1, 0.2)


def decode(locs: Tensor, priors: Tensor, variances: Tuple[float, float] = VARIANCES) -> Tensor:
    """Decode SSD regression outputs into boxes (spec §4).

    Args:
        locs: ``[..., P, 4]`` offsets ``(dy, dx, dh, dw)``.
        priors: ``[P, 4]`` priors ``(cy, cx, h, w)`` in input pixels.
    Returns:
        ``[..., P, 4]`` boxes ``(y1, x1, y2, x2)`` in input pixels, not clipped.
    """
    centre = priors[..., :2] + locs[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(locs[..., 2:] * variances[1])
    top_left = centre - size / 2
    return torch.cat([top_left, top_left + size], dim=-1)


def encode(boxes: Tensor, priors: Tensor, variances: Tuple[float, float] = VARIANCES) -> Tensor:
    """Inverse of :func:`decode`: ``boxes [P,4]`` (y1,x1,y2,x2) matched to ``priors [P,4]``
    (cy,cx,h,w) -> regression targets ``[P,4]``."""
    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    d_centre = (centre - priors[:, :2]) / (variances[0] * priors[:, 2:])
    d_size = torch.log(size / priors[:, 2:]) / variances[1]
    return torch.cat([d_centre, d_size], dim=1)


def box_area(boxes: Tensor) -> Tensor:
    """``[N,4]`` (y1,x1,y2,x2) -> ``[N]`` area ``(y2-y1)*(x2-x1)`` (no +1)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``[N,M]`` of ``a [N,4]`` and ``b [M,4]`` (y1,x1,y2,x2), areas without +1."""
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def priors_to_boxes(priors: Tensor) -> Tensor:
    """``(cy, cx, h, w)`` -> ``(y1, x1, y2, x2)``."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def yxyx_to_xyxy(boxes: Tensor) -> Tensor:
    """``(y1,x1,y2,x2)`` <-> ``(x1,y1,x2,y2)`` (the swap is its own inverse)."""
    return boxes[..., [1, 0, 3, 2]]


xyxy_to_yxyx = yxyx_to_xyxy
