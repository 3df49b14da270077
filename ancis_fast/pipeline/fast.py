"""The fast ANCIS pipeline: the reference network, run batched on padded detections.

Differences from :mod:`ancis_fast.pipeline.reference` (same models, same maths):

- the modules are used as given: the backend registry (:func:`ancis_fast.backends.build`)
  prepares them (BN folded, fused attention, channels-last, precision, scripting, ...);
- detection is one fused native call for the whole batch (``ops.detect_padded``); detections
  stay padded ``[B, M]`` with a count per image, ``M`` a *box budget*;
- ``layer_c0`` runs on each box's crop plus a 2-pixel halo (its receptive field) instead of
  on the whole image;
- the mask decoder runs step by step (``Segmenter.decode_stage`` from the deepest level,
  then ``head``) on many boxes at once:

  * ``mode="fast"`` (static): each box is decoded at a fixed crop shape, per axis the one
    of a few sizes (:data:`ancis_fast.config.CROP_SIZES`, level 0, halved per level,
    :func:`level_shape`) nearest its own level-0 length; per shape, a fixed *budget* of boxes is picked on the
    device (a stable sort, no host read) and every decoder step runs once for all of them; a box with fewer
    levels starts its decoding where the reference does (``torch.where`` keeps its own crop
    until then). No host synchronisation and no data-dependent shape: TorchScript,
    ``torch.export`` / AOTInductor, TensorRT and CUDA graphs take detector, detection and
    mask stage as one graph. Masks approximate the reference (tested: mean IoU >= 0.95 on
    matched cells, small and large);
  * ``mode="exact"``: boxes are grouped by their native crop shapes, planned on the host,
    so masks equal the reference up to float rounding;

- crops are channels-last when the pipeline is (the CPU convolutions' fast layout);
- masks are pasted on the device into per-box windows (``ops.paste_windows``), copied to the
  host once per batch.
"""
# No `from __future__ import annotations`: TorchScript reads FastCore's class annotations.
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..config import CROP_SIZES, MODES, PredictorConfig, check_crop_sizes
from ..instances import Instances
from ..masks import PatchMasks, tight_patch
from ..models.priors import make_priors
from ..ops.crop_and_resize import level_crop_bounds_unchecked
from .stages import StageTimer, image_scale, untimed

HALO = 2  # layer_c0 is two 3x3 convs: a 2-pixel halo makes the crop's features exact
NUM_LEVELS = 5  # c0..c4
#: box budgets are powers of two from this up (past the top, the caller's limit): few
#: distinct shapes (one CUDA graph / TensorRT profile each), at most 2x padded boxes
SMALLEST_BOX_BUDGET, LARGEST_BOX_BUDGET = 8, 4096
UNBOUNDED = 2**31 - 1  # the largest crop size's length limit
WINDOW_STEP = 16  # paste windows are rounded up to multiples of this (few distinct shapes)


@dataclass
class PaddedDetections:
    """The detections of a batch, padded: image ``b``'s are its first ``counts[b]`` rows,
    by descending score; rows after them are zero. Boxes in network-input pixels."""

    boxes: Tensor  # [B, M, 4] (y1, x1, y2, x2)
    scores: Tensor  # [B, M]
    labels: Tensor  # [B, M] int64
    counts: Tensor  # [B] int64

    def head(self, budget: int) -> "PaddedDetections":
        """The first ``budget`` rows of every image (``budget`` >= every count)."""
        return PaddedDetections(self.boxes[:, :budget], self.scores[:, :budget], self.labels[:, :budget], self.counts)


def box_budget(count: int, limit: int, smallest: int = SMALLEST_BOX_BUDGET, largest: int = LARGEST_BOX_BUDGET) -> int:
    """The smallest power of two from ``smallest`` holding ``count`` boxes, at most
    ``limit`` (``limit`` itself past ``largest``)."""
    budget = smallest
    while budget < count and budget < largest:
        budget *= 2
    return min(budget, limit) if budget >= count else limit


def shape_budget(count: int, limit: int, rounded: bool) -> int:
    """Boxes to decode at a crop shape that ``count`` boxes of the batch have: 0 for none;
    ``rounded`` (CUDA, where each budget is a graph to reuse): :func:`box_budget`; else
    exactly ``count`` (on a CPU padding is pure extra arithmetic)."""
    if count == 0:
        return 0
    return box_budget(count, limit) if rounded else count


def size_classes(bounds0: Tensor, edges: Tensor) -> Tensor:
    """Fast mode's crop shape of each box, as an index ``i * S + j`` into the shapes
    ``(sizes[i], sizes[j])``: per axis, the size nearest (in log scale) the box's level-0
    crop length. ``bounds0 [K,4]`` int64 inclusive crops, ``edges [S-1]`` float32: the
    geometric means of neighbouring sizes. Returns int64 ``[K]``."""
    lengths = (bounds0[:, 2:] - bounds0[:, :2] + 1).clamp(min=1).to(torch.float32)
    index = torch.bucketize(lengths, edges)
    return index[:, 0] * (edges.shape[0] + 1) + index[:, 1]


def level_shape(size0: int, level: int) -> int:
    """Crop length on ``level`` for a level-0 length, as the stride-2 pyramid halves it."""
    return max(3, int(round(size0 / 2**level)))


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
    """Detector + fused detection + batched mask stage, TorchScript- and export-compatible.

    ``forward(x)`` takes ``x [B,3,H,W]`` float32 (BGR in [0, 1] at ``input_size``, as
    :func:`~ancis_fast.pipeline.preprocess.preprocess` makes it) and returns, padded to
    ``M = max_det`` boxes per image (image ``b``'s are its first ``counts[b]`` rows):

    - ``boxes [B,M,4]`` float32 ``(y1, x1, y2, x2)`` in network-input pixels,
    - ``scores [B,M]`` float32 (descending), ``labels [B,M]`` int64, ``counts [B]`` int64,
    - ``probs [B,M,h,w]`` float32 mask probabilities, box ``k``'s in the top-left
      ``mask_sizes[b,k]`` region,
    - ``mask_sizes [B,M,2]`` int64 ``(h, w)``; ``(0, 0)``: no mask (padding, a box too thin,
      or, in fast mode, a box past its crop size's budget).

    In fast mode that is one static graph, each crop size decoding at most
    ``shape_budgets[i]`` boxes of the batch at crop shape ``crop_shapes[i]`` (``None``, the
    default: as many as the batch needs, read from the device once; see :meth:`core`).
    Scripted (``ancis_fast.backends.torchscript.script``) or exported it calls
    ``torch.ops.ancis.*``, which ``import ancis_fast`` registers; eagerly it goes through
    :mod:`ancis_fast.ops`. The modules are used as given (:class:`FastPipeline` prepares them).
    """

    input_size: Tuple[int, int]
    conf_thresh: float
    nms_thresh: float
    mode: str
    pre_nms_top_k: Optional[int]
    max_det: int
    channels_last: bool
    halo: int
    crop_sizes: List[int]
    crop_shapes: List[List[int]]
    size_limits: List[int]
    shape_budgets: Optional[List[int]]

    def __init__(self, detector: nn.Module, segmenter: nn.Module, priors: Tensor, input_size: Tuple[int, int],
                 conf_thresh: float = 0.3, nms_thresh: float = 0.3, mode: str = "fast",
                 pre_nms_top_k: Optional[int] = 200, max_det: int = 500, channels_last: bool = True,
                 crop_sizes: Sequence[int] = CROP_SIZES, shape_budgets: Optional[Sequence[int]] = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {MODES}")
        self.detector, self.segmenter = detector, segmenter
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.conf_thresh, self.nms_thresh = float(conf_thresh), float(nms_thresh)
        self.mode, self.pre_nms_top_k, self.max_det = mode, pre_nms_top_k, int(max_det)
        self.channels_last = channels_last
        self.halo = HALO
        self.crop_sizes = list(check_crop_sizes(crop_sizes))
        self.crop_shapes = [[h, w] for h in self.crop_sizes for w in self.crop_sizes]
        self.shape_budgets = None if shape_budgets is None else [int(b) for b in shape_budgets]
        if self.shape_budgets is not None and (len(self.shape_budgets) != len(self.crop_shapes)
                                               or min(self.shape_budgets) < 0):
            raise ValueError(f"shape_budgets: expected {len(self.crop_shapes)} counts >= 0 (one per crop shape "
                             f"of sizes {self.crop_sizes}), got {shape_budgets}")
        sizes = torch.tensor(self.crop_sizes, dtype=torch.float64)
        edges = (sizes[:-1] * sizes[1:]).sqrt().float()
        self.register_buffer("size_edges", edges.to(priors.device), persistent=False)
        #: the longest level-0 length (px) mapped to each crop size (lengths up to the edge above it)
        self.size_limits = [int(math.floor(e)) for e in edges.tolist()] + [UNBOUNDED]
        self.register_buffer("priors", priors, persistent=False)

    def core(self, max_det: Optional[int] = None, shape_budgets: Optional[Sequence[int]] = None) -> "FastCore":
        """A plain :class:`FastCore` sharing this one's modules and settings (to script or
        export), optionally with another box budget ``max_det`` per image and fixed
        ``shape_budgets`` (boxes per crop shape and batch; ``None``: read from the data)."""
        return FastCore(self.detector, self.segmenter, self.priors, self.input_size, self.conf_thresh,
                        self.nms_thresh, self.mode, self.pre_nms_top_k, self.max_det if max_det is None else max_det,
                        self.channels_last, self.crop_sizes, shape_budgets)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            x, locs, conf, features = self.run_detector(x)
            boxes, scores, labels, counts = self.detect_padded(locs, conf)
            probs, mask_sizes = self.segment_padded(x, features, boxes, counts, self.shape_budgets)
        return boxes, scores, labels, counts, probs, mask_sizes

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
        """``ops.detect_padded`` with this model's priors, thresholds and box budget:
        ``boxes [B,M,4]``, ``scores [B,M]``, ``labels [B,M]``, ``counts [B]``."""
        return ops.detect_padded(locs.float(), conf.float(), self.priors, self.conf_thresh, self.nms_thresh,
                                 self.pre_nms_top_k, self.max_det)

    def crop_bounds(self, boxes: Tensor, counts: Tensor, level_sizes: List[List[int]]) -> Tuple[Tensor, Tensor]:
        """Spec §5 crops of padded boxes ``[B,M,4]``, flattened: ``bounds [B*M, L, 4]`` and
        ``num_levels [B*M]`` (0 for the padding rows: no mask)."""
        batch, budget = boxes.shape[0], boxes.shape[1]
        real = (torch.arange(budget, device=boxes.device)[None, :] < counts[:, None]).reshape(-1)
        bounds, num_levels = level_crop_bounds_unchecked(boxes.reshape(batch * budget, 4).float(),
                                                         [self.input_size[0], self.input_size[1]], level_sizes)
        return bounds, num_levels * real.to(num_levels.dtype)

    def shape_counts(self, boxes: Tensor, counts: Tensor) -> Tensor:
        """int64 ``[len(crop_shapes)]``: how many boxes with a mask each fast-mode crop shape
        gets in this batch (what :meth:`segment_padded`'s ``shape_budgets`` must hold)."""
        bounds, num_levels = self.crop_bounds(boxes, counts, [[self.input_size[0], self.input_size[1]]])
        return self._count_shapes(size_classes(bounds[:, 0], self.size_edges), num_levels)

    def _count_shapes(self, classes: Tensor, num_levels: Tensor) -> Tensor:
        return torch.bincount(classes[num_levels > 0], minlength=len(self.crop_shapes))

    def segment_padded(self, image: Tensor, features: List[Tensor], boxes: Tensor, counts: Tensor,
                       shape_budgets: Optional[List[int]] = None) -> Tuple[Tensor, Tensor]:
        """Mask probabilities of padded boxes ``[B,M,4]`` (input pixels; image ``b``'s first
        ``counts[b]`` rows): ``probs [B,M,h,w]`` and ``mask_sizes [B,M,2]`` (0: no mask).
        Fast mode decodes at most ``shape_budgets[i]`` boxes at ``crop_shapes[i]`` (0 skips
        the shape); ``None``: as many as the boxes need (:meth:`shape_counts`, one read of
        the device; static graphs fix the budgets instead)."""
        batch, budget = boxes.shape[0], boxes.shape[1]
        batch_idx = torch.arange(batch, device=boxes.device)[:, None].expand(batch, budget).reshape(-1)
        image = _crop_source(image)
        features = [_crop_source(f) for f in features]
        level_sizes = [[image.shape[-2], image.shape[-1]]] + [[f.shape[-2], f.shape[-1]] for f in features[1:]]
        bounds, num_levels = self.crop_bounds(boxes, counts, level_sizes)
        if self.mode == "fast":
            classes = size_classes(bounds[:, 0], self.size_edges)
            if shape_budgets is None:
                found: List[int] = self._count_shapes(classes, num_levels).tolist()
                shape_budgets = [shape_budget(n, batch * budget, boxes.device.type == "cuda") for n in found]
            probs, mask_sizes = self._decode_static(image, features, bounds, num_levels, batch_idx, classes,
                                                    shape_budgets, level_sizes)
        else:
            probs, mask_sizes = self._decode_exact(image, features, bounds, num_levels, batch_idx)
        return (probs.reshape(batch, budget, probs.shape[-2], probs.shape[-1]),
                mask_sizes.reshape(batch, budget, 2))

    def _decode_static(self, image: Tensor, features: List[Tensor], bounds: Tensor, num_levels: Tensor,
                       batch_idx: Tensor, classes: Tensor, shape_budgets: List[int],
                       level_sizes: List[List[int]]) -> Tuple[Tensor, Tensor]:
        """Fast mode: per crop shape (``classes [K]``, :func:`size_classes`), its boxes (up to
        its budget, picked by a stable sort) decoded together at that shape. Returns
        ``probs [K, h, w]`` (zero-padded to the largest shape decoded) and ``mask_sizes [K, 2]``."""
        k = bounds.shape[0]
        budgets = [min(shape_budgets[i], k) for i in range(len(self.crop_shapes))]
        height, width = 1, 1
        for i, shape in enumerate(self.crop_shapes):
            if budgets[i] > 0:
                height, width = max(height, shape[0]), max(width, shape[1])
        probs = torch.zeros((k + 1, height, width), dtype=torch.float32, device=image.device)
        mask_sizes = torch.zeros((k + 1, 2), dtype=torch.long, device=image.device)
        for i, shape in enumerate(self.crop_shapes):
            if budgets[i] == 0:
                continue
            member = (classes == i) & (num_levels > 0)
            picked = torch.sort((~member).to(torch.uint8), stable=True).indices[: budgets[i]]
            chosen = member[picked]
            # rows of other shapes (picked only to fill the budget) land in the spare row k
            target = torch.where(chosen, picked, torch.full_like(picked, k))
            decoded = self._decode_at(shape, image, features, bounds[picked], num_levels[picked] * chosen,
                                      batch_idx[picked], self.max_levels(i, level_sizes))
            probs[:, : shape[0], : shape[1]].index_copy_(0, target, decoded)
            sizes = mask_sizes.new_full((target.shape[0], 2), shape[0])  # made on the device: no copy
            sizes[:, 1] = shape[1]
            mask_sizes.index_copy_(0, target, sizes)
        return probs[:k], mask_sizes[:k]

    def max_levels(self, shape_index: int, level_sizes: List[List[int]]) -> int:
        """The most levels a box of crop shape ``shape_index`` can have, so the deeper decoder
        steps are skipped for it: spec §5 stops at a crop thinner than 3 px, and a box whose
        level-0 crop is ``n`` px long spans at most ``n * h_L / H + 1`` px on a level of
        height ``h_L`` (each end rounds by half a pixel), so it needs ``n * h_L >= H``."""
        count = len(self.crop_sizes)
        longest_y, longest_x = self.size_limits[shape_index // count], self.size_limits[shape_index % count]
        levels = 0
        for size in level_sizes:
            if longest_y * size[0] < self.input_size[0] or longest_x * size[1] < self.input_size[1]:
                break
            levels += 1
        return max(levels, 1)

    def _decode_at(self, shape: List[int], image: Tensor, features: List[Tensor], bounds: Tensor,
                   num_levels: Tensor, batch_idx: Tensor, max_levels: int) -> Tensor:
        """Mask probabilities ``[n, h, w]`` of ``n`` boxes at level-0 crop ``shape (h, w)``,
        every level up to ``max_levels`` cropped at :func:`level_shape` of it and every
        decoder step run once for all; a box with ``L`` levels keeps its own level-``L-1``
        crop as the state until its decoding starts there, as the reference's does."""
        state = torch.zeros(0)
        top = min(bounds.shape[1], max_levels) - 1
        for level in range(top, -1, -1):
            crop_shape = [level_shape(shape[0], level), level_shape(shape[1], level)]
            crop = self._crop(level, image, features, bounds[:, level], batch_idx, crop_shape)
            if level == top:
                state = crop
            else:
                starts_here = (num_levels <= level + 1)[:, None, None, None]
                state = torch.where(starts_here, crop, self.segmenter.decode_stage(level, state, crop))
        return self.segmenter.head(state)[:, 0].float()

    def _decode_exact(self, image: Tensor, features: List[Tensor], bounds: Tensor, num_levels: Tensor,
                      batch_idx: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact mode: native crop sizes. Each decoder step runs once for all boxes that
        share its input and output crop shapes (the deep, weight-heavy steps see large
        batches even when level-0 sizes vary), planned on the host from one copy of the
        shapes. Returns ``probs [K, h, w]`` (zero-padded) and ``mask_sizes [K, 2]``."""
        k = bounds.shape[0]
        members, group_probs = self._decode_groups(image, features, batch_idx, bounds, num_levels)
        mask_sizes = torch.zeros((k, 2), dtype=torch.long, device=image.device)
        height, width = 1, 1
        for p in group_probs:
            height, width = max(height, p.shape[-2]), max(width, p.shape[-1])
        probs = torch.zeros((k, height, width), dtype=torch.float32, device=image.device)
        for index, p in zip(members, group_probs):
            probs[index, : p.shape[-2], : p.shape[-1]] = p[:, 0].float()
            # index_fill_ takes the sizes as kernel arguments: no host-to-device copy
            mask_sizes[:, 0].index_fill_(0, index, p.shape[-2])
            mask_sizes[:, 1].index_fill_(0, index, p.shape[-1])
        return probs, mask_sizes

    def _decode_groups(self, image: Tensor, features: List[Tensor], batch_idx: Tensor, bounds: Tensor,
                       num_levels: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """Exact mode's decoder, level by level from the deepest; returns groups of boxes:
        members ``[G]`` and mask probabilities ``[G,1,h,w]``. A box with ``L`` levels starts
        at level ``L-1`` with its crop there; boxes with no level get no mask."""
        device = image.device
        shapes = (bounds[..., 2:] - bounds[..., :2] + 1)  # [K, L, 2] native crop sizes
        plan = torch.cat([shapes.flatten(1), num_levels[:, None]], dim=1).cpu()  # one copy, one sync
        host_shapes, host_levels = plan[:, :-1].reshape(shapes.shape), plan[:, -1]
        members: List[Tensor] = []  # host indices
        states: List[Tensor] = []
        for level in range(host_shapes.shape[1] - 1, -1, -1):
            next_members: List[Tensor] = []
            next_states: List[Tensor] = []
            for index, state in zip(members, states):
                for rows, shape in _split_by_shape(host_shapes[index, level]):
                    part = _to(index[rows], device)
                    skip = self._crop(level, image, features, bounds[part, level], batch_idx[part], shape)
                    pre = state if rows.shape[0] == state.shape[0] else state[_to(rows, device)]
                    next_members.append(index[rows])
                    next_states.append(self.segmenter.decode_stage(level, pre, skip))
            starts = (host_levels == level + 1).nonzero().flatten()
            for rows, shape in _split_by_shape(host_shapes[starts, level]):
                part = _to(starts[rows], device)
                next_members.append(starts[rows])
                next_states.append(self._crop(level, image, features, bounds[part, level], batch_idx[part], shape))
            members, states = _merge_by_shape(next_members, next_states)
        return [_to(index, device) for index in members], [self.segmenter.head(state) for state in states]

    def _crop(self, level: int, image: Tensor, features: List[Tensor], bounds: Tensor, batch_idx: Tensor,
              shape: List[int]) -> Tensor:
        """Level-``level`` crops ``[n, C, h, w]`` of the integer crop ``bounds [n, 4]`` at
        ``shape`` (``layer_c0`` features on level 0), channels-last when configured."""
        if level == 0:
            crop = self._c0_crops(image, bounds, batch_idx, shape)
        else:
            crop = ops.crop_and_resize(features[level], bounds, batch_idx, shape, align_corners=True)
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
        crops = ops.crop_and_resize(image, halo_boxes, batch_idx, halo_size, align_corners=True)
        crops = self._layout(crops * inside)
        features = self.segmenter.encode_c0(crops, inside)
        return features[:, :, halo : halo + out_h, halo : halo + out_w]


class FastPipeline(FastCore):
    """Detector + detection + batched mask stage + device paste (the fast backends' pipeline).

    :meth:`run` takes a batch of network inputs to :class:`~ancis_fast.Instances`, the stage
    interface it shares with :class:`~ancis_fast.pipeline.reference.ReferencePipeline`; its
    stages are methods (:meth:`run_detector`, :meth:`detect`, :meth:`plan`, :meth:`segment`,
    :meth:`paste`). The modules are run as given (see :func:`ancis_fast.backends.build`).
    ``prior_height``: see :class:`~ancis_fast.config.PredictorConfig`.
    """

    def __init__(self, detector: nn.Module, segmenter: nn.Module, input_size: Tuple[int, int],
                 conf_thresh: float = 0.3, nms_thresh: float = 0.3, mode: str = "fast",
                 pre_nms_top_k: int | None = 200, max_det: int = 500, channels_last: bool = True,
                 prior_height: int | None = None, crop_sizes: Sequence[int] = CROP_SIZES, seg_thresh: float = 0.5,
                 static_compiler: Optional["StaticCompiler"] = None):
        priors = make_priors(*input_size, scale_height=prior_height).clone()
        super().__init__(detector, segmenter, priors, tuple(input_size), conf_thresh, nms_thresh, mode,
                         pre_nms_top_k, max_det, channels_last, crop_sizes)
        self.seg_thresh = float(seg_thresh)
        self.static_compiler = static_compiler if mode == "fast" else None
        #: per batch size: the compiled whole-pipeline graph and its boxes per crop shape
        self.static_graphs: Dict[int, Tuple[Callable[[Tensor], Tuple[Tensor, ...]], List[int]]] = {}

    @classmethod
    def from_config(cls, detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig",
                    device: torch.device, static_compiler: Optional["StaticCompiler"] = None) -> "FastPipeline":
        """The pipeline of ``config`` on ``device``, running the modules of a fast backend
        (and its ``static_compiler``, see :meth:`run`)."""
        return cls(detector, segmenter, config.input_size, config.conf_thresh, config.nms_thresh, config.mode,
                   config.max_candidates, config.max_detections, prior_height=config.prior_height,
                   crop_sizes=config.crop_sizes, seg_thresh=config.seg_thresh,
                   static_compiler=static_compiler).to(device)

    def run(self, batch: Tensor, original_sizes: List[Tuple[int, int]],
            timed: StageTimer = untimed) -> List[Instances]:
        """Segment network inputs ``batch [B,3,H,W]`` of images of ``original_sizes`` ``(H, W)``:
        one :class:`~ancis_fast.Instances` per image, in its own pixels. Each stage runs
        through ``timed`` (see :mod:`ancis_fast.pipeline.stages`).

        With a ``static_compiler`` (fast mode; e.g. the ``tensorrt`` backend's), a batch runs
        as one compiled graph of the whole static pipeline, made on the first batch of its
        size (:meth:`static_graph`); a batch that needs more boxes of a crop shape than that
        graph holds runs stage by stage instead, with the same result."""
        with torch.inference_mode():
            if self.static_compiler is not None:
                found = self._run_static(batch, original_sizes, timed)
                if found is not None:
                    return found
            x, locs, conf, features = timed("detector", self.run_detector, batch)
            detections = timed("detect", self.detect, locs, conf)
            plan = timed("detect", self.plan, detections, original_sizes)  # the one read of the device
            probs, mask_sizes = timed("mask", self.segment, x, features, detections, plan)
            return timed("paste", self.paste, detections, probs, mask_sizes, original_sizes, plan)

    def static_graph(self, batch: Tensor) -> Tuple[Callable[[Tensor], Tuple[Tensor, ...]], List[int]]:
        """The compiled whole-pipeline graph for batches shaped like ``batch`` and its boxes per
        crop shape: those ``batch`` needs with 2x headroom (:func:`static_budgets`), made by
        ``static_compiler`` on the first call for a batch size."""
        size = batch.shape[0]
        if size not in self.static_graphs:
            budgets = static_budgets(self, batch)
            self.static_graphs[size] = (self.static_compiler(self.core(shape_budgets=budgets).eval(), batch), budgets)
        return self.static_graphs[size]

    def _run_static(self, batch: Tensor, original_sizes: List[Tuple[int, int]],
                    timed: StageTimer) -> Optional[List[Instances]]:
        """:meth:`run` through :meth:`static_graph` (timed as the detector stage: it is all of
        them), or ``None`` when the batch has more boxes of a shape than the graph decodes."""
        graph, budgets = self.static_graph(batch)
        boxes, scores, labels, counts, probs, mask_sizes = timed("detector", graph, batch)
        detections = PaddedDetections(boxes, scores, labels, counts)
        plan = timed("detect", self.plan, detections, original_sizes)
        if any(need > have for need, have in zip(plan.shape_budgets, budgets)):
            return None
        return timed("paste", self.paste, detections, probs, mask_sizes, original_sizes, plan)

    def detect(self, locs: Tensor, conf: Tensor) -> PaddedDetections:
        """:meth:`FastCore.detect_padded` as :class:`PaddedDetections` (``M = max_det``)."""
        return PaddedDetections(*self.detect_padded(locs, conf))

    def plan(self, det: PaddedDetections, original_sizes: List[Tuple[int, int]]) -> "BatchPlan":
        """What the batch's static shapes are, from one read of the device (the fast path's
        only one before the results are copied back): the box budget per image (the
        largest count; on CUDA rounded by :func:`box_budget`), the boxes per crop shape
        (fast mode; :func:`shape_budget`) and each image's paste window (its largest box's
        extent at its original size, rounded up to :data:`WINDOW_STEP`)."""
        budget = det.boxes.shape[1]
        real = torch.arange(budget, device=det.counts.device)[None, :] < det.counts[:, None]
        wanted = [det.counts.max()[None], self.shape_counts(det.boxes, det.counts)]
        for b, size in enumerate(original_sizes):
            extents = ops.paste_extents(det.boxes[b], self.input_size, size) * real[b, :, None]
            wanted.append(extents.max(dim=0).values if budget else extents.new_zeros(2))
        values = torch.cat(wanted).tolist()
        per_shape = values[1 : 1 + len(self.crop_shapes)]
        extents = values[1 + len(self.crop_shapes):]
        on_gpu = det.boxes.device.type == "cuda"
        image_budget = box_budget(int(values[0]), budget) if on_gpu else max(int(values[0]), 1)
        shape_budgets = [shape_budget(int(n), image_budget * len(original_sizes), on_gpu) for n in per_shape]
        windows = [[max(-(-int(n) // WINDOW_STEP) * WINDOW_STEP, WINDOW_STEP) for n in extents[2 * b : 2 * b + 2]]
                   for b in range(len(original_sizes))]
        return BatchPlan(image_budget, shape_budgets, windows)

    def segment(self, image: Tensor, features: List[Tensor], det: PaddedDetections,
                plan: "BatchPlan") -> Tuple[Tensor, Tensor]:
        """Mask probabilities of every detection at ``plan``'s budgets (see
        :meth:`FastCore.segment_padded`)."""
        det = det.head(plan.image_budget)
        return self.segment_padded(image, features, det.boxes, det.counts, plan.shape_budgets)

    def paste(self, det: PaddedDetections, probs: Tensor, mask_sizes: Tensor, original_sizes: List[Tuple[int, int]],
              plan: "BatchPlan") -> List[Instances]:
        """Spec §6 masks of every image at its original size, made on the device as per-box
        windows (``plan.windows``) and copied to the host once: per image its ``counts[b]``
        detections as :class:`~ancis_fast.Instances` in its own pixels."""
        det = det.head(plan.image_budget)  # outputs of a wider static graph are cut to the plan too
        probs, mask_sizes = probs[:, : plan.image_budget], mask_sizes[:, : plan.image_budget]
        pasted: List[Tensor] = []
        for b, original_size in enumerate(original_sizes):
            pasted.extend(ops.paste_windows(probs[b], det.boxes[b], self.input_size, original_size, self.seg_thresh,
                                            mask_sizes=mask_sizes[b], window=plan.windows[b]))
        host = _to_host([det.boxes, det.scores, det.labels, det.counts] + pasted)
        boxes, scores, labels, counts = host[:4]
        results = []
        for b, original_size in enumerate(original_sizes):
            n = int(counts[b])
            masks = _patch_masks(host[4 + 2 * b][:n].numpy(), host[5 + 2 * b][:n].numpy(), original_size)
            results.append(Instances((boxes[b, :n] * image_scale(self.input_size, original_size)).numpy(),
                                     scores[b, :n].numpy(), masks, labels[b, :n].numpy()))
        return results


#: ``compiler(core, example)``: a callable running the static ``core`` (a :class:`FastCore`
#: with fixed ``shape_budgets``) on inputs shaped like ``example``, e.g. a TensorRT engine
StaticCompiler = Callable[[FastCore, Tensor], Callable[[Tensor], Tuple[Tensor, ...]]]


def check_static(core: FastCore, use: str) -> None:
    """A ``ValueError`` naming ``use`` unless ``core`` is the static pipeline: fast mode with
    fixed ``shape_budgets``."""
    if core.mode != "fast" or core.shape_budgets is None:
        raise ValueError(f"{use} needs the static pipeline: mode='fast' and fixed shape_budgets "
                         "(FastCore.core(shape_budgets=...), see static_budgets)")


def export_program(core: FastCore, example: Tensor) -> "torch.export.ExportedProgram":
    """``torch.export`` (strict) of the whole static pipeline ``core`` (fast mode, fixed
    ``shape_budgets``) for inputs shaped like ``example [B,3,H,W]``: what AOTInductor and
    Torch-TensorRT compile."""
    check_static(core, "a static export")
    with torch.no_grad():
        return torch.export.export(core, (example,), strict=True)


def static_budgets(core: FastCore, examples: Tensor, batch_size: Optional[int] = None,
                   headroom: float = 2.0) -> List[int]:
    """Boxes per crop shape for a static graph of ``core`` run on batches of ``batch_size``
    (default: as many as ``examples``): the counts that the network inputs ``examples
    [B,3,H,W]`` (images typical of the use) give, scaled to the batch size, times
    ``headroom``, rounded up by :func:`box_budget` (0 for shapes they never use)."""
    with torch.inference_mode():
        x, locs, conf, _ = core.run_detector(examples)
        boxes, _, _, counts = core.detect_padded(locs, conf)
        found = core.shape_counts(boxes, counts).tolist()
    batch = examples.shape[0] if batch_size is None else batch_size
    scale = headroom * batch / examples.shape[0]
    return [box_budget(math.ceil(n * scale), batch * core.max_det) if n else 0 for n in found]


@dataclass(frozen=True)
class BatchPlan:
    """The static shapes of one batch (:meth:`FastPipeline.plan`)."""

    image_budget: int  # boxes per image
    shape_budgets: List[int]  # boxes per fast-mode crop shape, for the batch
    windows: List[List[int]]  # (h, w) paste window per image


def _to_host(tensors: List[Tensor]) -> List[Tensor]:
    """``tensors`` on the CPU, copied together: one wait for the device, not one per tensor."""
    if not tensors or tensors[0].device.type == "cpu":
        return tensors
    copies = [t.to("cpu", non_blocking=True) for t in tensors]
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return copies


def _patch_masks(windows: np.ndarray, origins: np.ndarray, image_size: Tuple[int, int]) -> PatchMasks:
    """Bool windows ``[n, h, w]`` placed at ``origins [n, 2]`` (y, x) as tight patches."""
    patches, corners = [], []
    for window, (y, x) in zip(windows, origins):
        patch, (ty, tx) = tight_patch(window)
        patches.append(patch)
        corners.append((y + ty, x + tx) if patch.size else (0, 0))
    return PatchMasks(patches, np.array(corners, np.int64).reshape(-1, 2), image_size)
