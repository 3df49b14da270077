"""The reference ANCIS post-processing, exactly as spec §4-§6 describe the release,
quirks included. It is the yardstick for every fast path: keep it simple and literal.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from ..boxes import decode
from ..instances import Instances
from ..masks import PatchMasks, tight_patch
from ..models.priors import make_priors
from .stages import StageTimer, image_scale, untimed

if TYPE_CHECKING:
    from ..config import PredictorConfig

PRE_NMS_TOP_K = 200  # (quirk) hard-coded candidate cap of the release
TOP_K = 500

#: Integer crop of one level, inclusive ``(y1, x1, y2, x2)`` in that level's pixels.
CropBounds = Tuple[int, int, int, int]


def nms_greedy(boxes: Tensor, scores: Tensor, iou_threshold: float, top_k: Optional[int] = PRE_NMS_TOP_K) -> Tensor:
    """Greedy NMS of the release.

    Candidates are the ``top_k`` highest scores (ties: lower index first); repeatedly keep
    the best and drop the others whose IoU with it is **greater** than ``iou_threshold``.

    Args:
        boxes: ``[N,4]`` (y1,x1,y2,x2). scores: ``[N]``.
    Returns:
        int64 ``[K]`` indices into ``boxes``, in descending score.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    if top_k is not None:
        order = order[:top_k]
    y1, x1, y2, x2 = boxes.unbind(1)
    areas = (y2 - y1) * (x2 - x1)
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        rest = order[1:]
        h = (torch.min(y2[rest], y2[best]) - torch.max(y1[rest], y1[best])).clamp(min=0)
        w = (torch.min(x2[rest], x2[best]) - torch.max(x1[rest], x1[best])).clamp(min=0)
        inter = h * w
        iou = inter / ((areas[rest] - inter) + areas[best])
        order = rest[~(iou > iou_threshold)]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def detect(
    locs: Tensor,
    conf_logits: Tensor,
    priors: Tensor,
    conf_thresh: float = 0.3,
    nms_thresh: float = 0.3,
    top_k: int = TOP_K,
    pre_nms_top_k: Optional[int] = PRE_NMS_TOP_K,
) -> Tensor:
    """The release's ``Detect`` step (spec §4).

    Args:
        locs: ``[B,P,4]`` regression outputs. conf_logits: ``[B,P,nc]`` raw class logits.
        priors: ``[P,4]`` (cy,cx,h,w) in input pixels.
    Returns:
        ``[B,nc,top_k,5]`` rows ``(score, y1, x1, y2, x2)`` per class in descending score,
        zero rows after the last detection; class 0 (background) stays empty.
    """
    batch, _, num_classes = conf_logits.shape
    out = torch.zeros(batch, num_classes, top_k, 5, dtype=locs.dtype, device=locs.device)
    scores_all = torch.softmax(conf_logits, dim=-1)
    for b in range(batch):
        boxes = decode(locs[b], priors)
        for cls in range(1, num_classes):
            candidates = scores_all[b, :, cls] > conf_thresh
            if not bool(candidates.any()):
                continue
            scores, cand_boxes = scores_all[b, candidates, cls], boxes[candidates]
            keep = nms_greedy(cand_boxes, scores, nms_thresh, pre_nms_top_k)[:top_k]
            out[b, cls, : keep.numel()] = torch.cat([scores[keep, None], cand_boxes[keep]], dim=1)
    return out


def detections_of_image(detected: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Rows with score > 0 of one image's ``[nc,top_k,5]`` Detect output.

    Returns ``boxes [K,4]`` (y1,x1,y2,x2 input pixels), ``scores [K]``, ``labels [K]`` int64,
    sorted by descending score (stable: class order, then rank within the class).
    """
    rows, labels = [detected.new_zeros((0, 5))], [torch.zeros(0, dtype=torch.long, device=detected.device)]
    for cls in range(1, detected.shape[0]):
        valid = detected[cls, :, 0] > 0
        rows.append(detected[cls, valid])
        labels.append(torch.full((int(valid.sum()),), cls, dtype=torch.long, device=detected.device))
    rows_t, labels_t = torch.cat(rows), torch.cat(labels)
    order = torch.sort(rows_t[:, 0], descending=True, stable=True).indices
    return rows_t[order, 1:], rows_t[order, 0], labels_t[order]


def level_crop_bounds(box: Tensor, input_size: Tuple[int, int], level_sizes: Sequence[Tuple[int, int]]) -> List[CropBounds]:
    """Integer crop of ``box`` on each feature level, following spec §5.

    Args:
        box: ``[4]`` (y1,x1,y2,x2) in input pixels (float32).
        input_size: ``(H, W)`` of c0. level_sizes: ``(h, w)`` of c0..c4.
    Returns:
        inclusive bounds for levels 0..L-1; collection stops at the first level whose crop
        is empty or thinner than 3 pixels (so ``[]`` means the box gets no mask).
    """
    height, width = input_size
    normalised = box / torch.tensor([height, width, height, width], dtype=box.dtype)
    bounds: List[CropBounds] = []
    for h, w in level_sizes:
        scaled = torch.round(normalised * torch.tensor([h, w, h, w], dtype=box.dtype))  # half to even
        y1, x1 = max(0, int(scaled[0])), max(0, int(scaled[1]))
        y2, x2 = min(int(scaled[2]), h - 1), min(int(scaled[3]), w - 1)
        if y2 < y1 or x2 < x1 or y2 - y1 < 2 or x2 - x1 < 2:
            break
        bounds.append((y1, x1, y2, x2))
    return bounds


@torch.no_grad()
def segment(segmenter, features: List[Tensor], boxes: Tensor, batch_index: int = 0) -> List[Optional[Tensor]]:
    """Per-box mask probabilities, one decoder pass per box at native crop sizes (spec §5).

    Args:
        segmenter: a :class:`~ancis_fast.models.Segmenter`.
        features: ``[c0', c1, c2, c3, c4]`` with ``c0' = segmenter.encode_c0(c0)``.
        boxes: ``[K,4]`` (y1,x1,y2,x2) in input pixels.
    Returns:
        per box a ``[h0,w0]`` float tensor (level-0 crop size), or None when no level fits.
    """
    input_size = tuple(features[0].shape[-2:])
    level_sizes = [tuple(f.shape[-2:]) for f in features]
    masks: List[Optional[Tensor]] = []
    for box in boxes.float().cpu():
        bounds = level_crop_bounds(box, input_size, level_sizes)
        if not bounds:
            masks.append(None)
            continue
        crops = [f[batch_index : batch_index + 1, :, y1 : y2 + 1, x1 : x2 + 1]
                 for f, (y1, x1, y2, x2) in zip(features, bounds)]
        masks.append(segmenter(crops)[0, 0])
    return masks


def paste_bounds(box: Tensor, input_size: Tuple[int, int]) -> Optional[CropBounds]:
    """Inclusive integer box of spec §6 (round half to even, clipped), None if empty."""
    height, width = input_size
    y1, x1, y2, x2 = (float(v) for v in box)
    iy1, ix1 = max(0, round(y1)), max(0, round(x1))
    iy2, ix2 = min(round(y2), height - 1), min(round(x2), width - 1)
    if iy2 < iy1 or ix2 < ix1:
        return None
    return iy1, ix1, iy2, ix2


def paste_mask(prob: np.ndarray, box: Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int],
               seg_thresh: float = 0.5) -> np.ndarray:
    """Spec §6: resize ``prob [h,w]`` into the integer box on an input-size canvas,
    binarise at ``>= seg_thresh``, then resize the canvas (nearest) to ``original_size``.

    Returns:
        bool ``[H0,W0]`` mask at the original image size.
    """
    canvas = np.zeros(input_size, dtype=np.uint8)
    bounds = paste_bounds(box, input_size)
    if bounds is not None:
        y1, x1, y2, x2 = bounds
        patch = cv2.resize(prob.astype(np.float32), (x2 - x1 + 1, y2 - y1 + 1), interpolation=cv2.INTER_LINEAR)
        canvas[y1 : y2 + 1, x1 : x2 + 1] = patch >= seg_thresh
    if canvas.shape != tuple(original_size):
        canvas = cv2.resize(canvas, (original_size[1], original_size[0]), interpolation=cv2.INTER_NEAREST)
    return canvas.astype(bool)


class ReferencePipeline:
    """Spec §2-§6 one image and one box at a time, with the release's modules as they are:
    the yardstick of the fast pipelines, behind the same stage interface
    (:mod:`ancis_fast.pipeline.stages`)."""

    def __init__(self, detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig", device: torch.device):
        self.detector, self.segmenter, self.config = detector, segmenter, config
        self.priors = make_priors(*config.input_size, device=device, scale_height=config.prior_height)

    def run(self, batch: Tensor, original_sizes: List[Tuple[int, int]],
            timed: StageTimer = untimed) -> List[Instances]:
        """One :class:`~ancis_fast.Instances` per image of ``batch [B,3,H,W]``, in its
        ``original_sizes`` pixels; stages through ``timed``."""
        with torch.inference_mode():
            return [self._run_image(batch[b : b + 1], size, timed) for b, size in enumerate(original_sizes)]

    def _run_image(self, x: Tensor, original_size: Tuple[int, int], timed: StageTimer) -> Instances:
        cfg = self.config
        locs, conf, features = timed("detector", self.detector, x)
        detected = timed("detect", detect, locs, conf, self.priors, cfg.conf_thresh, cfg.nms_thresh,
                         cfg.max_detections, cfg.max_candidates)
        boxes, scores, labels, probs = timed("mask", self._segment, detected, features)
        return timed("paste", self._paste, boxes, scores, labels, probs, original_size)

    def _segment(self, detected: Tensor, features: List[Tensor]):
        """Spec §5 for the detections of one image: ``(boxes, scores, labels, probs)``."""
        boxes, scores, labels = detections_of_image(detected[0].cpu())
        features = [self.segmenter.encode_c0(features[0])] + list(features[1:])
        return boxes, scores, labels, segment(self.segmenter, features, boxes)

    def _paste(self, boxes: Tensor, scores: Tensor, labels: Tensor, probs: List[Optional[Tensor]],
               original_size: Tuple[int, int]) -> Instances:
        """Spec §6 for every detection with score >= conf_thresh (Detect already kept > only)."""
        cfg = self.config
        keep = (scores >= cfg.conf_thresh).nonzero().flatten().tolist()
        patches, origins = [], []
        for i in keep:
            dense = (np.zeros(original_size, bool) if probs[i] is None else paste_mask(
                probs[i].float().cpu().numpy(), boxes[i], cfg.input_size, original_size, cfg.seg_thresh))
            patch, origin = tight_patch(dense)  # one dense mask at a time keeps memory bounded
            patches.append(patch)
            origins.append(origin)
        masks = PatchMasks(patches, np.array(origins, np.int64).reshape(-1, 2), original_size)
        return Instances((boxes[keep] * image_scale(cfg.input_size, original_size)).numpy(), scores[keep].numpy(),
                         masks, labels[keep].numpy())
