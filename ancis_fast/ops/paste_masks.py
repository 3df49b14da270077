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
    return _linear_taps_at(torch.arange(dst_len), torch.tensor(src_len), torch.tensor(dst_len))


def _linear_taps_at(position: Tensor, src_len: Tensor, dst_len: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`_linear_taps` at destination indices ``position`` (int64) of resizes from
    ``src_len`` to ``dst_len`` (int64, broadcast against ``position``; float64 arithmetic as
    OpenCV's, the weight then float32)."""
    scale = 1.0 / (dst_len.double() / src_len.double())
    fx = ((position.double() + 0.5) * scale - 0.5).float()
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


def paste_windows(probs: Tensor, boxes: Tensor, input_size: Sequence[int], output_size: Optional[Sequence[int]] = None,
                  threshold: float = 0.5, mask_sizes: Optional[Tensor] = None,
                  window: Optional[Sequence[int]] = None) -> Tuple[Tensor, Tensor]:
    """:func:`paste_masks` into one window per box instead of a full-size mask each: the
    same pixels, in memory proportional to the boxes, made on the device of ``probs``
    (vectorised torch, no per-box loop).

    Args:
        probs, boxes, input_size, output_size, threshold, mask_sizes: as :func:`paste_masks`.
        window: ``(h, w)`` of every window, at least :func:`paste_extents`' largest;
            ``None``: exactly that (one read of the device).
    Returns:
        ``windows`` bool ``[K, h, w]`` and ``origins`` int64 ``[K, 2]`` ``(y, x)``: box
        ``k``'s mask is ``windows[k]`` placed at ``origins[k]`` of the ``output_size``
        image (all of it lies in the window); an empty window for boxes without a mask.
    """
    op = "paste_windows"
    (height, width), (out_h, out_w) = _check(probs, boxes, mask_sizes, None, input_size, output_size, op)
    if mask_sizes is None:
        mask_sizes = torch.tensor(probs.shape[1:], device=probs.device).expand(probs.shape[0], 2)
    tables = (_nearest_table(height, out_h, probs.device), _nearest_table(width, out_w, probs.device))
    y_span, x_span, valid = _window_spans(boxes, mask_sizes, (height, width), tables)
    if window is None:
        extent = _extents(y_span, x_span, valid)
        window = [max(int(n), 1) for n in (extent.max(dim=0).values.tolist() if extent.shape[0] else [1, 1])]
    win_h, win_w = _checks.size2(window, "window", op)
    chunk = max(1, _WINDOW_CHUNK_ELEMENTS // max(win_h * max(win_w, probs.shape[2]), 1))
    windows = [_paste_window_chunk(probs[s : s + chunk], mask_sizes[s : s + chunk],
                                   [t[s : s + chunk] for t in y_span], [t[s : s + chunk] for t in x_span],
                                   valid[s : s + chunk], tables, (win_h, win_w), threshold)
               for s in range(0, probs.shape[0], chunk)]
    out = torch.cat(windows) if windows else torch.zeros((0, win_h, win_w), dtype=torch.bool, device=probs.device)
    origins = torch.stack([y_span[0], x_span[0]], dim=1) * valid[:, None]
    return out, origins


def paste_extents(boxes: Tensor, input_size: Sequence[int], output_size: Sequence[int]) -> Tensor:
    """int64 ``[K, 2]``: the ``(h, w)`` of the output region each box's mask can cover (0
    for none), on the device of ``boxes``; the window :func:`paste_windows` needs is their
    maximum. Boxes ``[K, 4]`` (y1, x1, y2, x2) in input pixels."""
    (height, width), (out_h, out_w) = (_checks.size2(input_size, "input_size", "paste_extents"),
                                       _checks.size2(output_size, "output_size", "paste_extents"))
    tables = (_nearest_table(height, out_h, boxes.device), _nearest_table(width, out_w, boxes.device))
    ones = torch.ones((boxes.shape[0], 2), dtype=torch.long, device=boxes.device)
    return _extents(*_window_spans(boxes, ones, (height, width), tables))


def _extents(y_span: List[Tensor], x_span: List[Tensor], valid: Tensor) -> Tensor:
    return torch.stack([y_span[1] - y_span[0], x_span[1] - x_span[0]], dim=1) * valid[:, None]


_WINDOW_CHUNK_ELEMENTS = 1 << 24  # bounds paste_windows' temporaries (~5 floats per element)

def _window_spans(boxes: Tensor, mask_sizes: Tensor, input_size: Tuple[int, int],
                  tables: Tuple[Tensor, Tensor]) -> Tuple[List[Tensor], List[Tensor], Tensor]:
    """Per box and axis (``tables``: :func:`_nearest_table` of each axis):
    ``[out_start, out_end, canvas_start, canvas_len]`` (int64 ``[K]`` each; the
    spec §6 integer box on the canvas and the output pixels whose nearest canvas pixel lies
    in it) and ``valid [K]`` bool: the box has a mask and covers an output pixel."""
    b = boxes.double()
    nan = torch.isnan(b).any(dim=1)
    r = torch.round(torch.nan_to_num(b, nan=0.0).clamp(-4.0e15, 4.0e15)).to(torch.long)  # half to even
    valid = ~nan & (mask_sizes[:, 0] > 0) & (mask_sizes[:, 1] > 0)
    spans: List[List[Tensor]] = []
    for axis, (size, table) in enumerate(zip(input_size, tables)):
        lo, hi = r[:, axis].clamp(min=0), r[:, axis + 2].clamp(max=size - 1)
        start = torch.searchsorted(table, lo.contiguous())
        end = torch.searchsorted(table, hi.contiguous(), right=True)
        valid = valid & (hi >= lo) & (end > start)
        spans.append([start, end, lo, hi - lo + 1])
    return spans[0], spans[1], valid


def _axis_taps(span: List[Tensor], src_len: Tensor, length: int, table: Tensor) -> Tuple[Tensor, ...]:
    """Taps of ``length`` window positions of every box along one axis (``span`` as
    :func:`_window_spans`, ``src_len [K]`` the patch length): the ``cv::resize``
    ``INTER_LINEAR`` source index, next index, float32 weight of the next, whether only one
    source pixel is read, and whether the position lies in the box (all ``[K, length]``)."""
    start, end, canvas_lo, canvas_len = span
    src_len = src_len.clamp(min=1)  # boxes without a mask: any in-range taps, masked out later
    pos = start[:, None] + torch.arange(length, device=start.device)[None, :]
    inside = pos < end[:, None]
    canvas = table[pos.clamp(max=table.shape[0] - 1)] - canvas_lo[:, None]
    canvas = torch.minimum(canvas.clamp(min=0), canvas_len[:, None] - 1)
    s, f, single = _linear_taps_at(canvas, src_len[:, None], canvas_len[:, None])
    return s, torch.where(single, s, s + 1), f, single, inside


def _paste_window_chunk(probs: Tensor, mask_sizes: Tensor, y_span: List[Tensor], x_span: List[Tensor],
                        valid: Tensor, tables: Tuple[Tensor, Tensor], window: Tuple[int, int],
                        threshold: float) -> Tensor:
    """``paste_windows`` of a chunk of boxes: bool ``[k, h, w]``, the arithmetic of
    :func:`_resize_linear` (and so of the native op) per window pixel."""
    k, _, patch_w = probs.shape
    win_h, win_w = window
    sy, _, fy, _, in_y = _axis_taps(y_span, mask_sizes[:, 0], win_h, tables[0])
    sx, nx, fx, single_x, in_x = _axis_taps(x_span, mask_sizes[:, 1], win_w, tables[1])
    sy1 = torch.minimum(sy + 1, mask_sizes[:, :1].clamp(min=1) - 1)
    p = probs.float()

    def rows(index: Tensor) -> Tensor:  # the x-resized patch rows ``index [k, win_h]``: [k, win_h, win_w]
        picked = p.gather(1, index[:, :, None].expand(k, win_h, patch_w))
        a = picked.gather(2, sx[:, None, :].expand(k, win_h, win_w))
        b = picked.gather(2, nx[:, None, :].expand(k, win_h, win_w))
        w = fx[:, None, :]
        return torch.where(single_x[:, None, :], a * 1.0, a * (1 - w) + b * w)

    values = rows(sy) * (1 - fy)[:, :, None] + rows(sy1) * fy[:, :, None]
    thr = torch.tensor(threshold, dtype=torch.float32).item()
    return (values >= thr) & in_y[:, :, None] & in_x[:, None, :] & valid[:, None, None]
