"""Mask paste (spec §6): probability patches -> binary masks (or one label image) at the
original image size.

Per box: the integer paste box ``y1 = max(0, round(y1))``, ``y2 = min(round(y2), H - 1)``
(round half to even; same for x) on the ``H x W`` network-input canvas; the patch resized
into it with OpenCV's ``INTER_LINEAR`` geometry and float weights, binarised at
``>= threshold``; the canvas mapped to the original size with OpenCV's ``INTER_NEAREST``
rule. This is ``reference.paste_mask``; the masks equal it exactly when the patch already has
the box size (the reference pipeline's case). Resized patches follow OpenCV's generic
resize; the cv2 wheel may route float resizes through IPP, whose last-bit rounding differs,
so a pixel can flip only where the resized probability is within ~1e-6 of the threshold.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _checks, _native


def _check(probs: Tensor, boxes: Tensor, mask_sizes: Optional[Tensor], scores: Optional[Tensor],
           input_size: Sequence[int], output_size: Optional[Sequence[int]], op: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    _checks.tensor(probs, "probs", op)
    _checks.tensor(boxes, "boxes", op)
    if probs.dim() != 3:
        raise ValueError(f"{op}: probs must have shape [K, h, w], got {list(probs.shape)}")
    _checks.floating(probs, "probs", op)
    _checks.boxes(boxes, op)
    _checks.floating(boxes, "boxes", op)
    if boxes.shape[0] != probs.shape[0]:
        raise ValueError(f"{op}: boxes {list(boxes.shape)} and probs {list(probs.shape)} disagree on K")
    devices = {"probs": probs, "boxes": boxes}
    if mask_sizes is not None:
        _checks.tensor(mask_sizes, "mask_sizes", op)
        if tuple(mask_sizes.shape) != (probs.shape[0], 2):
            raise ValueError(f"{op}: mask_sizes must have shape [{probs.shape[0]}, 2] (h_k, w_k), "
                             f"got {list(mask_sizes.shape)}")
        _checks.integral(mask_sizes, "mask_sizes", op)
        devices["mask_sizes"] = mask_sizes
        if mask_sizes.device.type == "cpu" and mask_sizes.numel():
            bad = (mask_sizes < 0).any(dim=1) | (mask_sizes[:, 0] > probs.shape[1]) | (mask_sizes[:, 1] > probs.shape[2])
            if bool(bad.any()):
                k = int(bad.nonzero()[0])
                raise ValueError(f"{op}: mask_sizes[{k}] = {mask_sizes[k].tolist()} exceeds the probs patch size "
                                 f"({probs.shape[1]}, {probs.shape[2]})")
    if scores is not None:
        _checks.tensor(scores, "scores", op)
        if scores.dim() != 1 or scores.shape[0] != probs.shape[0]:
            raise ValueError(f"{op}: scores must have shape [{probs.shape[0]}], got {list(scores.shape)}")
        _checks.floating(scores, "scores", op)
        devices["scores"] = scores
    _checks.same_device(op, **devices)
    in_hw = _checks.size2(input_size, "input_size", op)
    out_hw = in_hw if output_size is None else _checks.size2(output_size, "output_size", op)
    return in_hw, out_hw


def paste_masks(probs: Tensor, boxes: Tensor, input_size: Sequence[int], output_size: Optional[Sequence[int]] = None,
                threshold: float = 0.5, mask_sizes: Optional[Tensor] = None, label_image: bool = False,
                scores: Optional[Tensor] = None) -> Tensor:
    """Paste per-box mask probabilities into full-size masks.

    Args:
        probs: ``[K, h, w]`` floating probabilities, one patch per box (its top-left
            ``mask_sizes[k]`` region when given).
        boxes: ``[K, 4]`` (y1, x1, y2, x2) in input (canvas) pixels.
        input_size: ``(H, W)`` of the network input, the canvas of spec §6.
        output_size: ``(H0, W0)`` of the original image (default: ``input_size``).
        threshold: ``seg_thresh``; a pixel is on when its resized probability is ``>=`` it.
        mask_sizes: optional ``[K, 2]`` integer valid ``(h_k, w_k)`` of each patch (native
            crop sizes padded into one tensor); 0 means the box has no mask.
        label_image: return one int32 ``[H0, W0]`` label image instead of masks: pixel value
            ``k + 1`` for the box ``k`` with the highest score covering it, 0 background.
        scores: ``[K]`` scores deciding who is on top in the label image (default: the given
            order, first on top; ties also go to the lower index).
    Returns:
        bool ``[K, H0, W0]`` masks, or int32 ``[H0, W0]`` labels when ``label_image``.
    """
    op = "paste_masks"
    in_hw, out_hw = _check(probs, boxes, mask_sizes, scores, input_size, output_size, op)
    args = (mask_sizes, list(in_hw), list(out_hw), float(threshold))
    tensors = [t for t in (probs, boxes, mask_sizes, scores) if t is not None]
    if _native.use_native(op, *tensors):
        if label_image:
            return torch.ops.ancis.paste_labels(probs, boxes, mask_sizes, scores, list(in_hw), list(out_hw),
                                                float(threshold))
        return torch.ops.ancis.paste_masks(probs, boxes, *args)
    if label_image:
        return paste_labels_torch(probs, boxes, mask_sizes, scores, in_hw, out_hw, threshold)
    return paste_masks_torch(probs, boxes, *args)


def paste_masks_torch(probs: Tensor, boxes: Tensor, mask_sizes: Optional[Tensor], input_size: Sequence[int],
                      output_size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """Pure-torch fallback of ``torch.ops.ancis.paste_masks``: bool ``[K, H0, W0]``."""
    out_h, out_w = int(output_size[0]), int(output_size[1])
    out = torch.zeros((probs.shape[0], out_h, out_w), dtype=torch.bool, device=probs.device)
    for k, pasted in _pasted(probs, boxes, mask_sizes, input_size, output_size, threshold):
        (oy0, oy1, ox0, ox1), window = pasted
        out[k, oy0:oy1, ox0:ox1] = window
    return out


def paste_labels_torch(probs: Tensor, boxes: Tensor, mask_sizes: Optional[Tensor], scores: Optional[Tensor],
                       input_size: Sequence[int], output_size: Sequence[int], threshold: float = 0.5) -> Tensor:
    """Pure-torch fallback of ``torch.ops.ancis.paste_labels``: int32 ``[H0, W0]``."""
    out_h, out_w = int(output_size[0]), int(output_size[1])
    labels = torch.zeros((out_h, out_w), dtype=torch.int32, device=probs.device)
    pasted = dict(_pasted(probs, boxes, mask_sizes, input_size, output_size, threshold))
    if scores is not None:
        priority = torch.sort(scores, descending=True, stable=True).indices.tolist()
    else:
        priority = list(range(probs.shape[0]))
    for k in reversed(priority):  # lowest priority first, the highest ends on top
        if k in pasted:
            (oy0, oy1, ox0, ox1), window = pasted[k]
            region = labels[oy0:oy1, ox0:ox1]
            region[window] = k + 1
    return labels


def _pasted(probs: Tensor, boxes: Tensor, mask_sizes: Optional[Tensor], input_size: Sequence[int],
            output_size: Sequence[int], threshold: float):
    """Yields ``(k, ((oy0, oy1, ox0, ox1), window))``: the output window a box covers and its
    bool mask there, for every box that has one."""
    height, width = int(input_size[0]), int(input_size[1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    ty, tx = _nearest_table(height, out_h, probs.device), _nearest_table(width, out_w, probs.device)
    thr = torch.tensor(threshold, dtype=torch.float32).item()
    boxes64 = boxes.double().cpu().tolist()
    sizes = mask_sizes.long().cpu().tolist() if mask_sizes is not None else None
    for k, box in enumerate(boxes64):
        mh, mw = sizes[k] if sizes is not None else probs.shape[1:]
        bounds = _paste_bounds(box, height, width)
        if mh == 0 or mw == 0 or bounds is None:
            continue
        y1, x1, y2, x2 = bounds
        oy0, oy1 = int(torch.searchsorted(ty, y1)), int(torch.searchsorted(ty, y2, right=True))
        ox0, ox1 = int(torch.searchsorted(tx, x1)), int(torch.searchsorted(tx, x2, right=True))
        if oy0 >= oy1 or ox0 >= ox1:
            continue
        patch = _resize_linear(probs[k, :mh, :mw].float(), y2 - y1 + 1, x2 - x1 + 1) >= thr
        window = patch[ty[oy0:oy1] - y1][:, tx[ox0:ox1] - x1]
        yield k, ((oy0, oy1, ox0, ox1), window)


def _paste_bounds(box: List[float], height: int, width: int) -> Optional[Tuple[int, int, int, int]]:
    if any(math.isnan(v) for v in box):
        return None
    y1, x1, y2, x2 = (round(min(max(v, -4.0e15), 4.0e15)) for v in box)  # round half to even
    y1, x1, y2, x2 = max(0, y1), max(0, x1), min(y2, height - 1), min(x2, width - 1)
    if y2 < y1 or x2 < x1:
        return None
    return y1, x1, y2, x2


def _nearest_table(src_len: int, dst_len: int, device) -> Tensor:
    """cv::resize INTER_NEAREST: source index of every destination index (int64 [dst_len])."""
    inv = 1.0 / (dst_len / src_len)
    src = torch.floor(torch.arange(dst_len, dtype=torch.float64) * inv).to(torch.long)
    return src.clamp(max=src_len - 1).to(device)


def _linear_taps(src_len: int, dst_len: int) -> Tuple[Tensor, Tensor, Tensor]:
    """cv::resize INTER_LINEAR taps of one axis: source index, float32 weight of the next
    pixel, and whether only one source pixel is read (the far border)."""
    scale = 1.0 / (dst_len / src_len)
    fx = ((torch.arange(dst_len, dtype=torch.float64) + 0.5) * scale - 0.5).float()
    sx = torch.floor(fx)
    fx = fx - sx
    sx = sx.to(torch.long)
    left = sx < 0
    sx, fx = torch.where(left, 0, sx), torch.where(left, 0.0, fx)
    single = sx + 1 >= src_len
    sx, fx = torch.where(single, src_len - 1, sx), torch.where(single, 0.0, fx)
    return sx, fx, single


def _resize_linear(src: Tensor, dst_h: int, dst_w: int) -> Tensor:
    """cv2.resize(src, (dst_w, dst_h), interpolation=INTER_LINEAR), generic path, float32."""
    src_h, src_w = src.shape
    if (src_h, src_w) == (dst_h, dst_w):
        return src.clone()
    sx, fx, single = (t.to(src.device) for t in _linear_taps(src_w, dst_w))
    nxt = torch.where(single, sx, sx + 1)
    two = src[:, sx] * (1 - fx) + src[:, nxt] * fx
    rows = torch.where(single, src[:, sx] * 1.0, two)
    sy, fy, _ = (t.to(src.device) for t in _linear_taps(src_h, dst_h))
    sy1 = (sy + 1).clamp(max=src_h - 1)
    return rows[sy] * (1 - fy)[:, None] + rows[sy1] * fy[:, None]
