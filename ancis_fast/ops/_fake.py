"""Fake (meta) kernels of the ``ancis::*`` operators, so that torch.compile and torch.export
trace through them. Imported once by :func:`ancis_fast.ops._native.available` after the
library has loaded (``register_fake`` raises on a second registration); data-dependent
lengths (the NMS keep) are unbacked sizes."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor


def fake(name: str) -> Callable:
    """Decorator registering a fake (meta) kernel for ``ancis::name``."""
    return torch.library.register_fake(f"ancis::{name}")


@fake("decode")
def _decode(locs: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2)) -> Tensor:
    return locs.new_empty(locs.shape, dtype=torch.result_type(locs, priors))


@fake("detect")
def _detect(locs: Tensor, conf_logits: Tensor, priors: Tensor, conf_thresh: float = 0.3, nms_thresh: float = 0.3,
            pre_nms_top_k: Optional[int] = 200, max_det: int = 500, variances: Sequence[float] = (0.1, 0.2)):
    batch, _, num_classes = conf_logits.shape
    slots = (num_classes - 1) * max_det
    return (locs.new_empty((batch, slots, 4)), locs.new_empty((batch, slots)),
            locs.new_empty((batch, slots), dtype=torch.long), locs.new_empty((batch,), dtype=torch.long))


def _keep(boxes: Tensor) -> Tensor:
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.long)


@fake("nms")
def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _keep(boxes)


@fake("batched_nms")
def _batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return _keep(boxes)


@fake("crop_and_resize")
def _crop_and_resize(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: List[int],
                     align_corners: bool = False) -> Tensor:
    out = features.new_empty((boxes.shape[0], features.shape[1], out_size[0], out_size[1]))
    if features.device.type == "cpu" and _channels_last_only(features):
        return out.contiguous(memory_format=torch.channels_last)  # as the CPU kernel writes it
    return out


def _channels_last_only(x: Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@fake("paste_masks")
def _paste_masks(probs: Tensor, boxes: Tensor, mask_sizes: Optional[Tensor], input_size: List[int],
                 output_size: List[int], threshold: float = 0.5) -> Tensor:
    return probs.new_empty((probs.shape[0], output_size[0], output_size[1]), dtype=torch.bool)


@fake("paste_labels")
def _paste_labels(probs: Tensor, boxes: Tensor, mask_sizes: Optional[Tensor], scores: Optional[Tensor],
                  input_size: List[int], output_size: List[int], threshold: float = 0.5) -> Tensor:
    return probs.new_empty((output_size[0], output_size[1]), dtype=torch.int32)
