"""The fast ANCIS pipeline: the reference network, run batched.

Differences from :mod:`ancis_fast.pipeline.reference` (same models, same maths):

- the detector is BN-folded with fused attention (:mod:`ancis_fast.backends.optimize`);
- detection is one fused native call for the whole batch (``ops.detect_padded``);
- ``layer_c0`` runs on each box's crop plus a 2-pixel halo (its receptive field) instead of
  on the whole image;
- the mask decoder runs step by step (``Segmenter.decode_stage`` from the deepest level,
  then ``head``), each step once per *group* of boxes that share its crop shapes, instead
  of once per box; deep steps, whose weights are large, so see large batches:

  * ``mode="exact"``: boxes are grouped by their native crop shapes, so masks equal the
    reference up to float rounding;
  * ``mode="fast"``: every level crop is resampled (``ops.crop_and_resize``, bilinear,
    align_corners) to a size bucket derived from the box's level-0 crop, so a few forward
    passes serve all boxes; masks approximate the reference (mean IoU >= 0.95, tested
    with the bundled model);

- crops are channels-last when the pipeline is (the CPU convolutions' fast layout);
- detection and the mask stage are one TorchScript-compatible implementation,
  :class:`FastCore`: eagerly it calls the checked ``ops`` wrappers (with their pure-torch
  fallbacks), scripted it calls ``torch.ops.ancis.*``; :mod:`ancis_fast.export` scripts it;
- masks are pasted with ``ops.paste_masks`` (the spec §6 resize, threshold and nearest
  resize to the original size), in chunks so memory stays bounded.
"""
# No `from __future__ import annotations`: TorchScript reads FastCore's class annotations.
import copy
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..backends.optimize import optimize_for_inference
from ..backends.torchscript import script
from ..masks import PatchMasks, tight_patch
from ..models.priors import make_priors
from ..ops.crop_and_resize import level_crop_bounds_unchecked

MODES = ("fast", "exact")
HALO = 2  # layer_c0 is two 3x3 convs: a 2-pixel halo makes the crop's features exact
#: level-0 crop sizes (per axis) that ``mode="fast"`` resamples boxes to, on a CPU: the
#: decoder's convolutions dominate there, so fine steps waste little compute on padding
BUCKETS = (8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512)
#: the same on a GPU, where every decoder pass costs ~100 small launches whatever its size:
#: fewer, coarser groups (19 instead of 85 for the 806 cells of the benchmark's 8 images)
GPU_BUCKETS = (16, 32, 64, 128, 256, 512)
NUM_LEVELS = 5  # c0..c4
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


def bucket_index(lengths: Tensor, buckets: Tensor) -> Tensor:
    """Index into ``buckets`` (ascending, on ``lengths``' device) of the smallest bucket >=
    each of ``lengths`` (the largest bucket for longer crops); same shape as ``lengths``."""
    return torch.bucketize(lengths.contiguous(), buckets).clamp(max=buckets.shape[0] - 1)


def default_buckets(device: torch.device) -> Tuple[int, ...]:
    """Fast mode's crop sizes for ``device``: :data:`GPU_BUCKETS` on CUDA, else :data:`BUCKETS`."""
    return GPU_BUCKETS if torch.device(device).type == "cuda" else BUCKETS


def check_buckets(buckets: Sequence[int]) -> Tuple[int, ...]:
    """``buckets`` as a tuple; a ``ValueError`` unless they are ascending integers >= 3."""
    values = tuple(buckets)
    if not values or any(not isinstance(b, int) or b < 3 for b in values) or list(values) != sorted(set(values)):
        raise ValueError(f"mask buckets {values}: expected ascending, distinct integers >= 3 (crop sizes in px)")
    return values


def level_shape(size0: int, level: int) -> int:
    """Crop length on ``level`` for a level-0 length, as the stride-2 pyramid halves it."""
    return max(3, int(round(size0 / 2**level)))


# The op calls of FastCore: the native op when scripted (TorchScript cannot compile the
# Python wrappers), the checked wrapper with its pure-torch fallback otherwise.

@torch.jit.unused
def _detect_padded_eager(locs: Tensor, conf: Tensor, priors: Tensor, conf_thresh: float, nms_thresh: float,
                         pre_nms_top_k: Optional[int], max_det: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return ops.detect_padded(locs, conf, priors, conf_thresh, nms_thresh, pre_nms_top_k, max_det)


def _detect_padded(locs: Tensor, conf: Tensor, priors: Tensor, conf_thresh: float, nms_thresh: float,
                   pre_nms_top_k: Optional[int], max_det: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if torch.jit.is_scripting():
        return torch.ops.ancis.detect(locs, conf, priors, conf_thresh, nms_thresh, pre_nms_top_k, max_det)
    return _detect_padded_eager(locs, conf, priors, conf_thresh, nms_thresh, pre_nms_top_k, max_det)


@torch.jit.unused
def _crop_and_resize_eager(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: List[int]) -> Tensor:
    return ops.crop_and_resize(features, boxes, batch_idx, out_size, align_corners=True)


def _crop_and_resize(features: Tensor, boxes: Tensor, batch_idx: Tensor, out_size: List[int]) -> Tensor:
    """``ops.crop_and_resize(..., align_corners=True)``."""
    if torch.jit.is_scripting():
        return torch.ops.ancis.crop_and_resize(features, boxes, batch_idx, out_size, True)
    return _crop_and_resize_eager(features, boxes, batch_idx, out_size)


def _inside_axis(lo: Tensor, hi: Tensor, n: int, limit: int) -> Tensor:
    """``[K, n]`` 1 where the ``n`` align-corners samples from ``lo`` to ``hi`` fall inside
    ``[0, limit)`` (pixel centres), else 0."""
    t = torch.arange(n, dtype=lo.dtype, device=lo.device)
    pos = lo[:, None] + (hi - lo)[:, None] * t / max(n - 1, 1)
    return ((pos > -0.5) & (pos < limit - 0.5)).to(lo.dtype)


def _inside_image(boxes: Tensor, out_size: List[int], height: int, width: int) -> Tensor:
    """``[K,1,h,w]`` 1 where an align-corners sample of ``boxes [K,4]`` falls inside the
    ``height x width`` image, else 0 (the full-image convolution sees zero padding there)."""
    ys = _inside_axis(boxes[:, 0], boxes[:, 2], out_size[0], height)
    xs = _inside_axis(boxes[:, 1], boxes[:, 3], out_size[1], width)
    return (ys[:, :, None] * xs[:, None, :])[:, None]


def _crop_source(x: Tensor) -> Tensor:
    """``x`` in a layout the crop kernel reads as it is: the CPU kernel reads channels-last
    maps (and writes channels-last crops); the others read NCHW, converted here once per
    map rather than in every crop call."""
    if x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _split_by_shape(shapes: Tensor) -> List[Tuple[Tensor, List[int]]]:
    """Rows of ``shapes [n, 2]`` grouped by value: ``(rows, [h, w])`` per distinct shape."""
    groups: List[Tuple[Tensor, List[int]]] = []
    if shapes.shape[0] == 0:
        return groups
    keys, inverse = torch.unique(shapes, dim=0, return_inverse=True)
    rows: List[List[int]] = keys.cpu().tolist()
    for g, key in enumerate(rows):
        groups.append(((inverse == g).nonzero().flatten(), key))
    return groups


def _merge_by_shape(members: List[Tensor], states: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    """Concatenate the groups (``members [n]``, ``states [n, C, h, w]``) whose states have
    the same ``(h, w)``."""
    keys: List[List[int]] = []
    grouped_members: List[List[Tensor]] = []
    grouped_states: List[List[Tensor]] = []
    for index, state in zip(members, states):
        key = [state.shape[-2], state.shape[-1]]
        slot = len(keys)
        for i, known in enumerate(keys):
            if known == key:
                slot = i
        if slot == len(keys):
            keys.append(key)
            grouped_members.append([index])
            grouped_states.append([state])
        else:
            grouped_members[slot].append(index)
            grouped_states[slot].append(state)
    return [_cat(m) for m in grouped_members], [_cat(x) for x in grouped_states]


def _to(index: Tensor, device: torch.device) -> Tensor:
    """A host index tensor on ``device``, copied without waiting for the device."""
    return index.to(device, non_blocking=True)


def _cat(tensors: List[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


class FastCore(nn.Module):
    """Detector + fused detection + batched mask stage, TorchScript-compatible.

    ``forward(x)`` takes ``x [B,3,H,W]`` float32 (BGR in [0, 1] at ``input_size``, as
    :func:`~ancis_fast.pipeline.preprocess.preprocess` makes it) and returns the
    detections of the whole batch, flattened:

    - ``boxes [K,4]`` float32 ``(y1, x1, y2, x2)`` in network-input pixels,
    - ``scores [K]`` float32, ``labels [K]`` int64 (>= 1), ``batch_idx [K]`` int64,
      image by image, each image's boxes by descending score,
    - ``probs [K,h,w]`` float32 mask probabilities, box ``k``'s in the top-left
      ``mask_sizes[k]`` region (zero-padded),
    - ``mask_sizes [K,2]`` int64 ``(h_k, w_k)``; ``(0, 0)``: no mask (box too thin).

    Scripted (``ancis_fast.backends.torchscript.script``) it calls ``torch.ops.ancis.*``,
    which ``import ancis_fast`` registers; eagerly it goes through :mod:`ancis_fast.ops`.
    The modules are used as given (:class:`FastPipeline` prepares them).
    """

    input_size: Tuple[int, int]
    conf_thresh: float
    nms_thresh: float
    mode: str
    pre_nms_top_k: Optional[int]
    max_det: int
    channels_last: bool
    halo: int
    buckets: List[int]

    def __init__(self, detector: nn.Module, segmenter: nn.Module, priors: Tensor, input_size: Tuple[int, int],
                 conf_thresh: float = 0.3, nms_thresh: float = 0.3, mode: str = "fast",
                 pre_nms_top_k: Optional[int] = 200, max_det: int = 500, channels_last: bool = True,
                 buckets: Sequence[int] = BUCKETS):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {MODES}")
        self.detector, self.segmenter = detector, segmenter
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.conf_thresh, self.nms_thresh = float(conf_thresh), float(nms_thresh)
        self.mode, self.pre_nms_top_k, self.max_det = mode, pre_nms_top_k, int(max_det)
        self.channels_last = channels_last
        self.halo = HALO
        self.buckets = list(check_buckets(buckets))
        # bucket_lengths[i, level]: crop length on ``level`` of bucket i (level_shape); buffers,
        # so that they live on the pipeline's device
        lengths = [[level_shape(b, level) for level in range(NUM_LEVELS)] for b in self.buckets]
        self.register_buffer("bucket_lengths", torch.tensor(lengths, dtype=torch.long, device=priors.device),
                             persistent=False)
        self.register_buffer("bucket_edges", torch.tensor(self.buckets, dtype=torch.long, device=priors.device),
                             persistent=False)
        self.register_buffer("priors", priors, persistent=False)

    def core(self) -> "FastCore":
        """A plain :class:`FastCore` sharing this one's modules and settings (to script or export)."""
        return FastCore(self.detector, self.segmenter, self.priors, self.input_size, self.conf_thresh,
                        self.nms_thresh, self.mode, self.pre_nms_top_k, self.max_det, self.channels_last, self.buckets)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            x, locs, conf, features = self.run_detector(x)
            boxes, scores, labels, batch_idx = self.detect_flat(locs, conf)
            probs, mask_sizes = self.segment_flat(x, features, boxes, batch_idx)
        return boxes, scores, labels, batch_idx, probs, mask_sizes

    def run_detector(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
        """Checks ``x [B,3,H,W]``; returns it (channels-last when configured) with the
        detector's ``locs [B,P,4]``, ``conf [B,P,C]`` and features ``[c0..c4]``."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.input_size[0] or x.shape[3] != self.input_size[1]:
            raise ValueError(f"input has shape {list(x.shape)}; expected [B, 3, {self.input_size[0]}, "
                             f"{self.input_size[1]}] (the model's input size, see pipeline.preprocess)")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        locs, conf, features = self.detector(x)
        return x, locs, conf, features

    def detect_padded(self, locs: Tensor, conf: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``ops.detect_padded`` with this model's priors and thresholds: ``boxes [B,M,4]``,
        ``scores [B,M]``, ``labels [B,M]``, ``counts [B]`` (fixed sizes, export-friendly)."""
        return _detect_padded(locs.float(), conf.float(), self.priors, self.conf_thresh, self.nms_thresh,
                              self.pre_nms_top_k, self.max_det)

    def detect_flat(self, locs: Tensor, conf: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detections of the batch flattened: ``boxes [K,4]``, ``scores [K]``, ``labels [K]``,
        ``batch_idx [K]``."""
        boxes, scores, labels, counts = self.detect_padded(locs, conf)
        valid = torch.arange(boxes.shape[1], device=boxes.device)[None, :] < counts[:, None]
        batch_idx = torch.arange(boxes.shape[0], device=boxes.device)[:, None].expand_as(valid)
        return boxes[valid], scores[valid], labels[valid], batch_idx[valid]

    def segment_flat(self, image: Tensor, features: List[Tensor], boxes: Tensor,
                     batch_idx: Tensor) -> Tuple[Tensor, Tensor]:
        """Mask probabilities of boxes ``[K,4]`` (input pixels) of images ``batch_idx [K]``:
        ``probs [K,h,w]`` (zero-padded) and ``mask_sizes [K,2]`` (valid size; 0 = no mask,
        as the reference's no-level boxes)."""
        k = boxes.shape[0]
        image = _crop_source(image)
        features = [_crop_source(f) for f in features]
        level_sizes = [[image.shape[-2], image.shape[-1]]] + [[f.shape[-2], f.shape[-1]] for f in features[1:]]
        bounds, num_levels = level_crop_bounds_unchecked(boxes.float(), [self.input_size[0], self.input_size[1]],
                                                         level_sizes)
        shapes = self._crop_shapes(bounds, num_levels)
        members, group_probs = self._decode(image, features, batch_idx, bounds, num_levels, shapes)
        mask_sizes = torch.zeros((k, 2), dtype=torch.long, device=image.device)
        if len(members) == 0:
            return image.new_zeros((k, 1, 1)), mask_sizes
        height, width = 1, 1
        for p in group_probs:
            height, width = max(height, p.shape[-2]), max(width, p.shape[-1])
        probs = image.new_zeros((k, height, width))
        for index, p in zip(members, group_probs):
            probs[index, : p.shape[-2], : p.shape[-1]] = p[:, 0].to(probs.dtype)
            # index_fill_ takes the sizes as kernel arguments: no host-to-device copy
            mask_sizes[:, 0].index_fill_(0, index, p.shape[-2])
            mask_sizes[:, 1].index_fill_(0, index, p.shape[-1])
        return probs, mask_sizes

    def _crop_shapes(self, bounds: Tensor, num_levels: Tensor) -> Tensor:
        """``[K, L, 2]`` int64: the crop ``(h, w)`` each box is decoded at on each level (0
        on levels it does not use). Exact: its native crop sizes; fast: the level lengths
        of the bucket of its level-0 size."""
        sizes = bounds[..., 2:] - bounds[..., :2] + 1  # [K, L, 2]
        if self.mode == "fast":
            lengths = self.bucket_lengths  # [buckets, L]
            index = bucket_index(sizes[:, 0], self.bucket_edges)  # [K, 2]
            sizes = torch.stack([lengths[index[:, 0], : sizes.shape[1]], lengths[index[:, 1], : sizes.shape[1]]], dim=2)
        used = torch.arange(sizes.shape[1], device=bounds.device)[None, :] < num_levels[:, None]
        return sizes * used[:, :, None]

    def _decode(self, image: Tensor, features: List[Tensor], batch_idx: Tensor, bounds: Tensor,
                num_levels: Tensor, shapes: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """The mask decoder, level by level from the deepest: each step runs once for all
        boxes that share its input and output crop shapes, so the deep, weight-heavy steps
        see large batches even when level-0 sizes vary. Returns groups of boxes: members
        ``[G]`` and mask probabilities ``[G,1,h,w]``. A box with ``L`` levels starts at
        level ``L-1`` with its crop there; boxes with no level get no mask.

        The groups are planned on the host from one copy of ``shapes`` and ``num_levels``
        (on a GPU, the mask stage's only synchronisation); only index tensors go back."""
        device = image.device
        plan = torch.cat([shapes.flatten(1), num_levels[:, None]], dim=1).cpu()  # one copy, one sync
        host_shapes, host_levels = plan[:, :-1].reshape(shapes.shape), plan[:, -1]
        members: List[Tensor] = []  # host indices
        states: List[Tensor] = []
        for level in range(host_shapes.shape[1] - 1, -1, -1):
            next_members: List[Tensor] = []
            next_states: List[Tensor] = []
            for index, state in zip(members, states):
                for rows, shape in _split_by_shape(host_shapes[index, level]):
                    part = index[rows]
                    skip = self._crop(level, image, features, bounds, batch_idx, _to(part, device), shape)
                    pre = state if rows.shape[0] == state.shape[0] else state[_to(rows, device)]
                    next_members.append(part)
                    next_states.append(self.segmenter.decode_stage(level, pre, skip))
            starts = (host_levels == level + 1).nonzero().flatten()
            for rows, shape in _split_by_shape(host_shapes[starts, level]):
                part = starts[rows]
                next_members.append(part)
                next_states.append(self._crop(level, image, features, bounds, batch_idx, _to(part, device), shape))
            members, states = _merge_by_shape(next_members, next_states)
        return [_to(index, device) for index in members], [self.segmenter.head(state) for state in states]

    def _crop(self, level: int, image: Tensor, features: List[Tensor], bounds: Tensor, batch_idx: Tensor,
              part: Tensor, shape: List[int]) -> Tensor:
        """Level-``level`` crops ``[n, C, h, w]`` of boxes ``part`` at ``shape`` (``layer_c0``
        features on level 0), channels-last when configured (the CPU convolutions' layout)."""
        if level == 0:
            crop = self._c0_crops(image, bounds[part, 0], batch_idx[part], shape)
        else:
            crop = _crop_and_resize(features[level], bounds[part, level], batch_idx[part], shape)
        return self._layout(crop)

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _c0_crops(self, image: Tensor, bounds: Tensor, batch_idx: Tensor, shape: List[int]) -> Tensor:
        """``layer_c0`` features of the level-0 crops, computed on crops with a halo.

        The halo crop is sampled on the same grid as the crop (``align_corners=True`` steps
        of the crop's own spacing), extended by ``HALO`` samples each side; at native size
        that is the image itself, so exact mode is exact away from the image border, and the
        border is zero-padded like the full-image convolution.
        """
        out_h, out_w, halo = shape[0], shape[1], self.halo
        b = bounds.to(image.dtype)
        step_y = (b[:, 2] - b[:, 0]) / max(out_h - 1, 1)
        step_x = (b[:, 3] - b[:, 1]) / max(out_w - 1, 1)
        halo_boxes = torch.stack([b[:, 0] - halo * step_y, b[:, 1] - halo * step_x,
                                  b[:, 2] + halo * step_y, b[:, 3] + halo * step_x], dim=1)
        halo_size = [out_h + 2 * halo, out_w + 2 * halo]
        inside = _inside_image(halo_boxes, halo_size, image.shape[-2], image.shape[-1])
        crops = self._layout(_crop_and_resize(image, halo_boxes, batch_idx, halo_size) * inside)
        features = self.segmenter.encode_c0(crops, inside)
        return features[:, :, halo : halo + out_h, halo : halo + out_w]


class FastPipeline(FastCore):
    """Detector + detection + batched mask stage (the fast backends' pipeline).

    ``forward(x [B,3,H,W])`` returns :class:`Detections` and the mask probabilities
    ``probs [K, h, w]`` (each box's valid top-left ``mask_sizes[k]`` region) ready for
    :meth:`paste`; the computation is :class:`FastCore`'s. With ``scripted`` the detector
    and the mask network run as TorchScript.
    ``prior_height``: see :class:`~ancis_fast.predictor.PredictorConfig`.
    """

    def __init__(self, detector: nn.Module, segmenter: nn.Module, input_size: Tuple[int, int],
                 conf_thresh: float = 0.3, nms_thresh: float = 0.3, mode: str = "fast",
                 pre_nms_top_k: int | None = 200, max_det: int = 500, channels_last: bool = True,
                 scripted: bool = False, prior_height: int | None = None, buckets: Sequence[int] = BUCKETS):
        detector = optimize_for_inference(detector, channels_last=channels_last).eval()
        segmenter = copy.deepcopy(segmenter).eval()
        if channels_last:  # weights in the crops' layout: no per-call weight conversion
            segmenter = segmenter.to(memory_format=torch.channels_last)
        if scripted:
            detector, segmenter = script(detector), script(segmenter)
        priors = make_priors(*input_size, scale_height=prior_height).clone()
        super().__init__(detector, segmenter, priors, tuple(input_size), conf_thresh, nms_thresh, mode,
                         pre_nms_top_k, max_det, channels_last, buckets)

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tuple[Detections, Tensor, Tensor]:  # type: ignore[override]
        boxes, scores, labels, batch_idx, probs, mask_sizes = super().forward(x)
        return Detections(boxes, scores, labels, batch_idx), probs, mask_sizes

    def detect(self, locs: Tensor, conf: Tensor) -> Detections:
        """:meth:`FastCore.detect_flat` as :class:`Detections`."""
        return Detections(*self.detect_flat(locs, conf))

    def segment(self, image: Tensor, features: List[Tensor], det: Detections) -> Tuple[Tensor, Tensor]:
        """Mask probabilities of every detection (see :meth:`FastCore.segment_flat`)."""
        return self.segment_flat(image, features, det.boxes, det.batch_idx)

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
