"""Bilinear crop-and-resize of many boxes at once, plus the spec §5 integer crop bounds.

Two kinds of boxes, told apart by dtype:

* floating ``(y1, x1, y2, x2)`` in continuous feature-pixel coordinates (pixel ``i`` covers
  ``[i, i + 1)``). ``align_corners=False`` samples the centres of ``h x w`` equal bins, the
  geometry and arithmetic of ``torchvision.ops.roi_align(aligned=True, sampling_ratio=1)``
  (identical results); ``align_corners=True`` puts the first and last samples on the box
  edges (index coordinates). Samples beyond ``[-1, size]`` are zero, others clamp to the map.
* integer inclusive crops ``(y1, x1, y2, x2)`` (for example from :func:`level_crop_bounds`):
  the crop ``features[b, :, y1:y2+1, x1:x2+1]`` resampled as
  ``F.interpolate(crop, (h, w), mode="bilinear", align_corners=...)`` would, never reading
  outside it; ``(h, w)`` equal to the crop size gives the crop itself, exactly. Bounds are
  clipped to the map; an empty crop gives zeros.
"""
# No `from __future__ import annotations`: TorchScript reads the wrappers' annotations.

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from . import _checks, _native


def _check(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: Sequence[int]) -> Tuple[int, int]:
    op = "crop_and_resize"
    _checks.tensor(features, "features", op)
    _checks.tensor(boxes, "boxes", op)
    _checks.tensor(batch_idx, "batch_idx", op)
    if features.dim() != 4:
        raise ValueError(f"{op}: features must have shape [B, C, H, W], got {list(features.shape)}")
    _checks.floating(features, "features", op)
    _checks.boxes(boxes, op)
    if boxes.dtype == torch.bool or boxes.is_complex():
        raise ValueError(f"{op}: boxes must be floating (continuous) or integer (inclusive crops), got {boxes.dtype}")
    if batch_idx.dim() != 1 or batch_idx.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: batch_idx must have shape [{boxes.shape[0]}], got {list(batch_idx.shape)}")
    _checks.integral(batch_idx, "batch_idx", op)
    _checks.same_device(op, features=features, boxes=boxes, batch_idx=batch_idx)
    if batch_idx.device.type == "cpu" and batch_idx.numel() and (
            int(batch_idx.min()) < 0 or int(batch_idx.max()) >= features.shape[0]):
        raise ValueError(f"{op}: batch_idx values must lie in [0, {features.shape[0]}), "
                         f"got [{int(batch_idx.min())}, {int(batch_idx.max())}]")
    return _checks.size2(out_size, "out_size", op)


def crop_and_resize(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: List[int],
                    align_corners: bool = False) -> Tensor:
    """Bilinear crops of ``K`` boxes, box-parallel.

    Args:
        features: ``[B, C, H, W]`` floating feature maps.
        boxes: ``[K, 4]`` ``(y1, x1, y2, x2)`` in this map's pixels: floating (continuous) or
            integer (inclusive crops), see the module docstring.
        batch_idx: ``[K]`` integer image of each box.
        out_size: ``(h, w)`` of every crop.
        align_corners: sample grid convention, see the module docstring.
    Returns:
        ``[K, C, h, w]`` in the dtype of ``features``.

    Scripted, compiled or exported, this is ``torch.ops.ancis.crop_and_resize`` unchecked
    (see :func:`~ancis_fast.ops._native.tracing`).
    """
    if _native.tracing():
        return torch.ops.ancis.crop_and_resize(features, boxes, batch_idx, out_size, align_corners)
    return _crop_and_resize_checked(features, boxes, batch_idx, out_size, align_corners)


@torch.jit.unused
def _crop_and_resize_checked(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: List[int],
                             align_corners: bool) -> Tensor:
    h, w = _check(features, boxes, batch_idx, out_size)
    if _native.use_native("crop_and_resize", features, boxes, batch_idx):
        return torch.ops.ancis.crop_and_resize(features, boxes, batch_idx, [h, w], bool(align_corners))
    return crop_and_resize_torch(features, boxes, batch_idx, (h, w), align_corners)


def level_crop_bounds(boxes: Tensor, input_size: Sequence[int],
                      level_sizes: Sequence[Sequence[int]]) -> Tuple[Tensor, Tensor]:
    """Spec §5 integer crops of many boxes on every level (vectorised
    ``reference.level_crop_bounds``).

    Args:
        boxes: ``[K, 4]`` (y1, x1, y2, x2) in input pixels (float32 as the reference).
        input_size: ``(H, W)`` of c0. level_sizes: ``(h, w)`` of c0..c{L-1}.
    Returns:
        ``bounds [K, L, 4]`` int64 inclusive ``(y1, x1, y2, x2)`` per level, and
        ``num_levels [K]`` int64: levels ``0..num_levels-1`` are the ones the reference
        collects (it stops at the first empty or thinner-than-3 crop); 0 means no mask.
        Bounds at levels ``>= num_levels`` are meaningless.
    """
    height, width = _checks.size2(input_size, "input_size", "level_crop_bounds")
    sizes = [[int(h), int(w)] for h, w in level_sizes]
    return level_crop_bounds_unchecked(boxes, [height, width], sizes)


def _yxyx(height: int, width: int, like: Tensor) -> Tensor:
    """``[height, width, height, width]`` with ``like``'s dtype and device, made there (a
    tensor from a list would be a host-to-device copy, and a GPU synchronisation)."""
    scale = like.new_full((4,), float(height))
    scale[1::2] = float(width)
    return scale


def level_crop_bounds_unchecked(boxes: Tensor, input_size: List[int],
                                level_sizes: List[List[int]]) -> Tuple[Tensor, Tensor]:
    """:func:`level_crop_bounds` without input checks; TorchScript-compatible."""
    height, width = input_size[0], input_size[1]
    normalised = boxes / _yxyx(height, width, boxes)
    bounds: List[Tensor] = []
    valid: List[Tensor] = []
    for size in level_sizes:
        h, w = size[0], size[1]
        scaled = torch.round(normalised * _yxyx(h, w, boxes))  # half to even, as the reference
        finite = torch.isfinite(scaled).all(dim=1)
        scaled = torch.nan_to_num(scaled, nan=0.0).clamp(-2.0**40, 2.0**40).to(torch.long)
        y1, x1 = scaled[:, 0].clamp(min=0), scaled[:, 1].clamp(min=0)
        y2, x2 = scaled[:, 2].clamp(max=h - 1), scaled[:, 3].clamp(max=w - 1)
        bounds.append(torch.stack([y1, x1, y2, x2], dim=1))
        valid.append(finite & (y2 - y1 >= 2) & (x2 - x1 >= 2))
    if len(bounds) == 0:
        empty = torch.zeros((boxes.shape[0],), dtype=torch.long, device=boxes.device)
        return torch.zeros((boxes.shape[0], 0, 4), dtype=torch.long, device=boxes.device), empty
    num_levels = torch.stack(valid, dim=1).to(torch.long).cumprod(dim=1).sum(dim=1)
    return torch.stack(bounds, dim=1), num_levels


def crop_and_resize_torch(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: Sequence[int],
                          align_corners: bool = False) -> Tensor:
    """Pure-torch fallback of :func:`crop_and_resize` (same signature and results)."""
    out_h, out_w = (int(v) for v in out_size)
    num, channels, height, width = boxes.shape[0], features.shape[1], features.shape[2], features.shape[3]
    out = features.new_zeros((num, channels, out_h, out_w))
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    for k in range(num):
        if boxes.is_floating_point():
            b = boxes[k].to(acc)
            ty = _box_taps(b[0], b[2], out_h, height, align_corners)
            tx = _box_taps(b[1], b[3], out_w, width, align_corners)
        else:
            y1, x1 = max(int(boxes[k, 0]), 0), max(int(boxes[k, 1]), 0)
            y2, x2 = min(int(boxes[k, 2]), height - 1), min(int(boxes[k, 3]), width - 1)
            if y2 < y1 or x2 < x1:
                continue
            ty = _crop_taps(y1, y2, out_h, align_corners, acc, features.device)
            tx = _crop_taps(x1, x2, out_w, align_corners, acc, features.device)
        out[k] = _sample(features[int(batch_idx[k])].to(acc), ty, tx).to(features.dtype)
    return out


# An axis of taps: lo, hi (int64 [n]), w_lo, w_hi (acc dtype [n]), valid (bool [n]).
Taps = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _box_taps(b0: Tensor, b1: Tensor, out_len: int, size: int, align_corners: bool) -> Taps:
    i = torch.arange(out_len, dtype=b0.dtype, device=b0.device)
    if align_corners:
        scale = (b1 - b0) / (out_len - 1) if out_len > 1 else torch.zeros_like(b0)
        c = b0 + i * scale
    else:
        start = b0 - 0.5
        bin_size = ((b1 - 0.5) - start) / out_len
        c = (start + i * bin_size) + 0.5 * bin_size
    valid = (c >= -1) & (c <= size)
    c = torch.where(valid, c, torch.zeros_like(c)).clamp(min=0)
    lo = c.to(torch.long)
    top = lo >= size - 1
    lo = torch.where(top, torch.full_like(lo, size - 1), lo)
    hi = torch.where(top, lo, lo + 1)
    c = torch.where(top, lo.to(c.dtype), c)
    w_hi = c - lo.to(c.dtype)
    return lo, hi, 1 - w_hi, w_hi, valid


def _crop_taps(c0: int, c1: int, out_len: int, align_corners: bool, dtype: torch.dtype, device) -> Taps:
    n_in = c1 - c0 + 1
    i = torch.arange(out_len, dtype=dtype, device=device)
    if align_corners:
        scale = torch.tensor((n_in - 1) if out_len > 1 else 0, dtype=dtype) / torch.tensor(max(out_len - 1, 1), dtype=dtype)
        src = scale.to(device) * i
    else:
        scale = torch.tensor(n_in, dtype=dtype) / torch.tensor(out_len, dtype=dtype)
        src = (scale.to(device) * (i + 0.5) - 0.5).clamp(min=0)
    lo = src.to(torch.long).clamp(max=n_in - 1)
    hi = torch.where(lo < n_in - 1, lo + 1, lo)
    w_hi = (src - lo.to(dtype)).clamp(0, 1)
    valid = torch.ones(out_len, dtype=torch.bool, device=device)
    return lo + c0, hi + c0, 1 - w_hi, w_hi, valid


def _sample(plane: Tensor, ty: Taps, tx: Taps) -> Tensor:
    """``plane [C, H, W]`` sampled at the taps -> ``[C, h, w]``, roi_align's combination order."""
    ylo, yhi, wy_lo, wy_hi, vy = ty
    xlo, xhi, wx_lo, wx_hi, vx = tx
    rows_lo, rows_hi = plane[:, ylo], plane[:, yhi]                      # [C, h, W]
    v1, v2 = rows_lo[:, :, xlo], rows_lo[:, :, xhi]                      # [C, h, w]
    v3, v4 = rows_hi[:, :, xlo], rows_hi[:, :, xhi]
    w1, w2 = wy_lo[:, None] * wx_lo[None, :], wy_lo[:, None] * wx_hi[None, :]
    w3, w4 = wy_hi[:, None] * wx_lo[None, :], wy_hi[:, None] * wx_hi[None, :]
    val = 0 + (((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4)
    return torch.where((vy[:, None] & vx[None, :]), val, torch.zeros_like(val))


__all__: List[str] = ["crop_and_resize", "crop_and_resize_torch", "level_crop_bounds",
                       "level_crop_bounds_unchecked"]
