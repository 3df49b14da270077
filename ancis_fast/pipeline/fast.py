"""The fast ANCIS pipeline: the reference network, run batched.

Differences from :mod:`ancis_fast.pipeline.reference` (same models, same maths):

- the detector is BN-folded with fused attention (:mod:`ancis_fast.backends.optimize`);
- detection is one fused native call for the whole batch (``ops.detect_padded``);
- ``layer_c0`` runs on each box's crop plus a 2-pixel halo (its receptive field) instead of
  on the whole image;
- the mask decoder runs once per *group* of boxes instead of once per box:

  * ``mode="exact"``: boxes whose crops have identical shapes on every level share a
    forward pass at their native sizes, so masks equal the reference up to float rounding;
  * ``mode="fast"``: every level crop is resampled (``ops.crop_and_resize``, bilinear,
    align_corners) to a size bucket derived from the box's level-0 crop, so a few forward
    passes serve all boxes; masks approximate the reference (the issue's bound, mean
    IoU >= 0.95, is still to be checked with a trained model).

- masks are pasted with ``ops.paste_masks`` (the spec §6 resize, threshold and nearest
  resize to the original size), in chunks so memory stays bounded.
"""
from __future__ import annotations

import bisect
import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..backends.optimize import optimize_for_inference
from ..backends.torchscript import script
from ..masks import PatchMasks, tight_patch
from ..models.priors import make_priors

MODES = ("fast", "exact")
HALO = 2  # layer_c0 is two 3x3 convs: a 2-pixel halo makes the crop's features exact
#: level-0 crop sizes (per axis) that ``mode="fast"`` resamples boxes to
BUCKETS = (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512)
PASTE_CHUNK = 64


@dataclass
class Detections:
    """All detections of a batch, flattened: boxes in network-input pixels."""

    boxes: Tensor  # [K, 4] (y1, x1, y2, x2)
    scores: Tensor  # [K]
    labels: Tensor  # [K] int64
    batch_idx: Tensor  # [K] int64

    def index(self, keep: Tensor) -> "Detections":
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.batch_idx[keep])


def bucket_size(length: int, buckets: Sequence[int] = BUCKETS) -> int:
    """Smallest bucket >= ``length`` (the largest bucket for longer crops)."""
    return buckets[min(bisect.bisect_left(buckets, length), len(buckets) - 1)]


def level_shape(size0: int, level: int) -> int:
    """Crop length on ``level`` for a level-0 length, as the stride-2 pyramid halves it."""
    return max(3, int(round(size0 / 2**level)))


class FastPipeline(nn.Module):
    """Detector + detection + batched mask stage.

    ``forward(x [B,3,H,W])`` returns :class:`Detections` and the mask probabilities
    ``probs [K, h, w]`` (each box's valid top-left ``mask_sizes[k]`` region) ready for
    :meth:`paste`. With ``scripted`` the detector and the mask network run as TorchScript.
    ``prior_height``: see :class:`~ancis_fast.predictor.PredictorConfig`.
    """

    def __init__(self, detector: nn.Module, segmenter: nn.Module, input_size: Tuple[int, int],
                 conf_thresh: float = 0.3, nms_thresh: float = 0.3, mode: str = "fast",
                 pre_nms_top_k: int | None = 200, max_det: int = 500, channels_last: bool = True,
                 scripted: bool = False, prior_height: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {MODES}")
        self.detector = optimize_for_inference(detector, channels_last=channels_last).eval()
        self.segmenter = copy.deepcopy(segmenter).eval()
        if scripted:
            self.detector, self.segmenter = script(self.detector), script(self.segmenter)
        self.input_size = tuple(input_size)
        self.conf_thresh, self.nms_thresh = conf_thresh, nms_thresh
        self.mode, self.pre_nms_top_k, self.max_det = mode, pre_nms_top_k, max_det
        self.channels_last = channels_last
        self.register_buffer("priors", make_priors(*self.input_size, scale_height=prior_height).clone(), persistent=False)

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tuple[Detections, Tensor, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        locs, conf, features = self.detector(x)
        detections = self.detect(locs, conf)
        probs, mask_sizes = self.segment(x, features, detections)
        return detections, probs, mask_sizes

    def detect(self, locs: Tensor, conf: Tensor) -> Detections:
        boxes, scores, labels, counts = ops.detect_padded(
            locs.float(), conf.float(), self.priors, self.conf_thresh, self.nms_thresh, self.pre_nms_top_k, self.max_det)
        valid = torch.arange(boxes.shape[1], device=boxes.device)[None, :] < counts[:, None]
        batch_idx = torch.arange(boxes.shape[0], device=boxes.device)[:, None].expand_as(valid)
        return Detections(boxes[valid], scores[valid], labels[valid], batch_idx[valid])

    def segment(self, image: Tensor, features: List[Tensor], det: Detections) -> Tuple[Tensor, Tensor]:
        """Mask probabilities of every detection: ``probs [K, h, w]`` (zero-padded) and
        ``mask_sizes [K, 2]`` (valid size; 0 = no mask, as the reference's no-level boxes)."""
        k = det.boxes.shape[0]
        # the crop kernels read NCHW; one conversion per level beats one per crop call
        image, features = image.contiguous(), [f.contiguous() for f in features]
        level_sizes = [tuple(image.shape[-2:])] + [tuple(f.shape[-2:]) for f in features[1:]]
        bounds, num_levels = ops.level_crop_bounds(det.boxes.float(), self.input_size, level_sizes)
        groups = self._groups(bounds, num_levels)
        if not groups:
            return image.new_zeros((k, 1, 1)), torch.zeros((k, 2), dtype=torch.long, device=image.device)
        outputs = [(members, self._decode_group(image, features, det.batch_idx, bounds, members, key))
                   for key, members in groups.items()]
        height = max(p.shape[-2] for _, p in outputs)
        width = max(p.shape[-1] for _, p in outputs)
        probs = image.new_zeros((k, height, width))
        mask_sizes = torch.zeros((k, 2), dtype=torch.long, device=image.device)
        for members, group_probs in outputs:
            index = torch.tensor(members, device=image.device)
            probs[index, : group_probs.shape[-2], : group_probs.shape[-1]] = group_probs[:, 0]
            mask_sizes[index] = torch.tensor(group_probs.shape[-2:], device=image.device)
        return probs, mask_sizes

    def _groups(self, bounds: Tensor, num_levels: Tensor) -> Dict[tuple, List[int]]:
        """Boxes that can share a decoder pass: same level count and crop shapes (exact) or
        same level count and size bucket (fast)."""
        sizes = (bounds[..., 2:] - bounds[..., :2] + 1).cpu().tolist()  # [K, 5, 2]
        groups: Dict[tuple, List[int]] = defaultdict(list)
        for i, levels in enumerate(num_levels.cpu().tolist()):
            if levels == 0:
                continue
            if self.mode == "exact":
                key = tuple(tuple(s) for s in sizes[i][:levels])
            else:
                key = (levels, bucket_size(sizes[i][0][0]), bucket_size(sizes[i][0][1]))
            groups[key].append(i)
        return groups

    def _decode_group(self, image: Tensor, features: List[Tensor], batch_idx: Tensor, bounds: Tensor,
                      members: List[int], key: tuple) -> Tensor:
        index = torch.tensor(members, device=image.device)
        group_bounds, group_batch = bounds[index], batch_idx[index]
        if self.mode == "exact":
            shapes = list(key)
        else:
            levels, height, width = key
            shapes = [(level_shape(height, i), level_shape(width, i)) for i in range(levels)]
        crops = [self._c0_crops(image, group_bounds[:, 0], group_batch, shapes[0])]
        for level, shape in enumerate(shapes[1:], start=1):
            crops.append(ops.crop_and_resize(features[level], group_bounds[:, level], group_batch, shape,
                                             align_corners=True))
        return self.segmenter(crops)

    def _c0_crops(self, image: Tensor, bounds: Tensor, batch_idx: Tensor, shape: Tuple[int, int]) -> Tensor:
        """``layer_c0`` features of the level-0 crops, computed on crops with a halo.

        The halo crop is sampled on the same grid as the crop (``align_corners=True`` steps
        of the crop's own spacing), extended by ``HALO`` samples each side; at native size
        that is the image itself, so exact mode is exact away from the image border, and the
        border is zero-padded like the full-image convolution.
        """
        out_h, out_w = shape
        b = bounds.to(image.dtype)
        step_y = (b[:, 2] - b[:, 0]) / max(out_h - 1, 1)
        step_x = (b[:, 3] - b[:, 1]) / max(out_w - 1, 1)
        halo_boxes = torch.stack([b[:, 0] - HALO * step_y, b[:, 1] - HALO * step_x,
                                  b[:, 2] + HALO * step_y, b[:, 3] + HALO * step_x], dim=1)
        halo_size = (out_h + 2 * HALO, out_w + 2 * HALO)
        inside = self._inside_image(halo_boxes, halo_size, image.shape[-2:])
        halo = ops.crop_and_resize(image, halo_boxes, batch_idx, halo_size, align_corners=True) * inside
        features = self.segmenter.encode_c0(halo, inside)
        return features[:, :, HALO : HALO + out_h, HALO : HALO + out_w]

    @staticmethod
    def _inside_image(boxes: Tensor, out_size: Tuple[int, int], image_size: Sequence[int]) -> Tensor:
        """``[K,1,h,w]`` 1 where an align-corners sample falls inside the image, else 0
        (the full-image convolution sees zero padding there)."""
        def axis(lo: Tensor, hi: Tensor, n: int, limit: int) -> Tensor:
            t = torch.arange(n, dtype=boxes.dtype, device=boxes.device)
            pos = lo[:, None] + (hi - lo)[:, None] * t / max(n - 1, 1)
            return ((pos > -0.5) & (pos < limit - 0.5)).to(boxes.dtype)

        ys = axis(boxes[:, 0], boxes[:, 2], out_size[0], int(image_size[0]))
        xs = axis(boxes[:, 1], boxes[:, 3], out_size[1], int(image_size[1]))
        return (ys[:, :, None] * xs[:, None, :])[:, None]

    def paste(self, det: Detections, probs: Tensor, mask_sizes: Tensor, original_size: Tuple[int, int],
              seg_thresh: float) -> PatchMasks:
        """Spec §6 masks of the given detections at ``original_size`` as tight patches."""
        patches: List[np.ndarray] = []
        origins: List[Tuple[int, int]] = []
        for start in range(0, det.boxes.shape[0], PASTE_CHUNK):
            part = slice(start, start + PASTE_CHUNK)
            dense = ops.paste_masks(probs[part].float(), det.boxes[part].float(), self.input_size, original_size,
                                    seg_thresh, mask_sizes=mask_sizes[part]).cpu().numpy()
            for mask in dense:
                patch, origin = tight_patch(mask)
                patches.append(patch)
                origins.append(origin)
        return PatchMasks(patches, np.array(origins, np.int64).reshape(-1, 2), original_size)
