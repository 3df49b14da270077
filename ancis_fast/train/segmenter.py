"""Segmenter training (spec §7): the detector is frozen; each predicted box that overlaps a
ground-truth box with IoU >= 0.5 is segmented from its native-size feature crops (the
reference crop rule, :func:`~ancis_fast.pipeline.reference.level_crop_bounds`, so that
training and inference see the same crops) and scored with BCE against the ground-truth
mask cut to the box."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from ..boxes import box_iou
from ..data.sample import Sample
from ..evaluate import Evaluator
from ..models import build_detector, build_segmenter, load_weights, make_priors
from ..pipeline import reference
from .config import StageConfig
from .data import ExampleDataset, validation_images, validation_size
from .detector import _autocast
from .loop import TrainLoop, resolve_device
from .loss import box_bce, per_image_mean
from .optim import SEGMENTER_RECIPES, Recipe

CropBounds = Tuple[int, int, int, int]


@dataclass(frozen=True, kw_only=True)
class SegmenterTrainConfig(StageConfig):
    """Segmenter training settings (see :class:`~.config.StageConfig`).

    Attributes:
        detector_weights: the trained detector (frozen here).
        match_iou: a predicted box trains the mask head when its best IoU with a
            ground-truth box is >= this.
        max_boxes: at most this many boxes per image per step (random subset; 0 = all),
            bounding the per-box decoder cost on dense images.
        gt_boxes: also train on the ground-truth boxes themselves (not in the release;
            helps while the detector is still weak).
    """

    recipes: ClassVar[Dict[str, Recipe]] = SEGMENTER_RECIPES

    detector_weights: str
    max_boxes: int = 64
    gt_boxes: bool = False
    seg_thresh: float = 0.5


def mask_target(labels: np.ndarray, label_id: int, box: Tensor, input_size: Tuple[int, int],
                shape: Tuple[int, int]) -> np.ndarray:
    """Ground-truth mask of ``label_id`` cut to the box's integer bounds (spec §6 rounding)
    and resized (nearest) to ``shape`` ``(h, w)``; float32 {0,1}."""
    bounds = reference.paste_bounds(box, input_size)
    if bounds is None:
        return np.zeros(shape, np.float32)
    y1, x1, y2, x2 = bounds
    crop = (labels[y1:y2 + 1, x1:x2 + 1] == label_id).astype(np.uint8)
    if crop.shape != tuple(shape):
        crop = cv2.resize(crop, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return crop.astype(np.float32)


def training_boxes(pred_boxes: Tensor, gt_boxes: Tensor, gt_ids: Tensor, match_iou: float, max_boxes: int,
                   generator: torch.Generator, include_gt: bool = False) -> Tuple[Tensor, Tensor]:
    """Boxes that train the mask head and the label id of their ground truth.

    Returns ``boxes [K,4]`` (y1,x1,y2,x2) and ``ids [K]``: predicted boxes whose best IoU
    with a ground-truth box is >= ``match_iou`` (plus the ground-truth boxes themselves
    when ``include_gt``), at most ``max_boxes`` of them (random subset) when > 0.
    """
    boxes = torch.cat([pred_boxes, gt_boxes]) if include_gt else pred_boxes
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return boxes.new_zeros(0, 4), gt_ids.new_zeros(0)
    best_iou, best_gt = box_iou(boxes.float(), gt_boxes.float()).max(dim=1)
    keep = torch.nonzero(best_iou >= match_iou).flatten()
    if max_boxes and len(keep) > max_boxes:
        keep = keep[torch.randperm(len(keep), generator=generator)[:max_boxes]]
    return boxes[keep], gt_ids[best_gt[keep]]


def _shape_key(bounds: List[CropBounds]) -> Tuple[Tuple[int, int], ...]:
    return tuple((y2 - y1 + 1, x2 - x1 + 1) for y1, x1, y2, x2 in bounds)


def segment_logits(segmenter: nn.Module, features: List[Tensor], jobs: List[Tuple[int, List[CropBounds]]]) -> List[Tuple[List[int], Tensor]]:
    """Mask logits of many boxes, one decoder pass per group of boxes whose crops have the
    same shapes on every level (exactly what one pass per box computes: the decoder has
    no cross-sample operation).

    Args:
        features: ``[c0', c1, c2, c3, c4]`` of the batch. jobs: ``(image index, level
            bounds)`` per box.
    Returns:
        ``(job indices, logits [K,1,h0,w0])`` per group.
    """
    groups: Dict[Tuple, List[int]] = defaultdict(list)
    for k, (_, bounds) in enumerate(jobs):
        groups[_shape_key(bounds)].append(k)
    out = []
    for members in groups.values():
        levels = len(jobs[members[0]][1])
        crops = [torch.cat([_crop(features[level], *jobs[k], level) for k in members]) for level in range(levels)]
        out.append((members, segmenter.decode_logits(crops)))
    return out


def _crop(feature: Tensor, image: int, bounds: List[CropBounds], level: int) -> Tensor:
    y1, x1, y2, x2 = bounds[level]
    return feature[image:image + 1, :, y1:y2 + 1, x1:x2 + 1]


def mask_validation(detector: nn.Module, segmenter: nn.Module, val: Sequence[Tuple[np.ndarray, np.ndarray, str]],
                    cfg: SegmenterTrainConfig, device: torch.device,
                    size: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
    """Mask AP@0.5/0.7, DSB mAP and matching stats through the public inference path
    (:class:`~ancis_fast.Predictor`, reference backend), in the network frame ``size``
    (default: the training input size)."""
    from ..predictor import Predictor, PredictorConfig

    predictor = Predictor.from_models(detector, segmenter, "reference", device, PredictorConfig(
        input_size=tuple(size or cfg.input_size), conf_thresh=cfg.conf_thresh, nms_thresh=cfg.nms_thresh,
        seg_thresh=cfg.seg_thresh, prior_height=cfg.prior_height))
    evaluator = Evaluator()
    for image, labels, name in val:
        instances = predictor.predict(image)
        evaluator.add_masks(instances.masks, instances.scores, labels, name)
    summary = evaluator.summary()
    return {k: float(summary[k]) for k in ("ap50", "ap70", "dsb_map", "precision", "recall", "f1", "pq",
                                           "num_pred", "num_gt")}


def train_segmenter(cfg: SegmenterTrainConfig, train_source: Sequence[Sample],
                    val_source: Optional[Sequence[Sample]] = None) -> Dict[str, Any]:
    """Train the ANCIS mask head on a frozen detector; see :class:`SegmenterTrainConfig`.

    Returns:
        summary dict: weight paths, best mask AP@0.5, history.
    """
    recipe = cfg.resolved_recipe()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    detector = load_weights(build_detector(cfg.backbone), cfg.detector_weights).to(device).eval()
    for param in detector.parameters():
        param.requires_grad_(False)
    segmenter = build_segmenter(cfg.backbone)
    if cfg.init_weights:
        load_weights(segmenter, cfg.init_weights)
    segmenter.to(device)
    priors = make_priors(*cfg.input_size, device=device, scale_height=cfg.prior_height)
    input_size = tuple(cfg.input_size)
    dataset = ExampleDataset(train_source, input_size, cfg.augmentation(), cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    def step(batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, float]]:
        images = batch["images"].to(device, non_blocking=True)
        detector.eval()
        with torch.no_grad(), _autocast(device, cfg.amp):
            locs, conf, features = detector(images)
        detected = reference.detect(locs.float(), conf.float(), priors, cfg.conf_thresh, cfg.nms_thresh)
        with _autocast(device, cfg.amp):
            features = [segmenter.encode_c0(images)] + [f.detach() for f in features[1:]]
        level_sizes = [tuple(f.shape[-2:]) for f in features]
        jobs, targets = [], []
        for b in range(len(images)):
            pred_boxes = reference.detections_of_image(detected[b].cpu())[0]
            boxes, ids = training_boxes(pred_boxes, batch["boxes"][b], batch["ids"][b], cfg.match_iou,
                                        cfg.max_boxes, generator, cfg.gt_boxes)
            labels = batch["labels"][b].numpy()
            for box, label_id in zip(boxes, ids.tolist()):
                bounds = reference.level_crop_bounds(box, input_size, level_sizes)
                if bounds:
                    y1, x1, y2, x2 = bounds[0]
                    jobs.append((b, bounds))
                    targets.append(mask_target(labels, label_id, box, input_size, (y2 - y1 + 1, x2 - x1 + 1)))
        if not jobs:
            return features[0].sum() * 0.0, {"boxes": 0.0}
        per_box, image_index = [], []
        with _autocast(device, cfg.amp):
            for members, logits in segment_logits(segmenter, features, jobs):
                target = torch.from_numpy(np.stack([targets[k] for k in members]))[:, None].to(device)
                per_box.append(box_bce(logits.float(), target))
                image_index += [jobs[k][0] for k in members]
        loss = per_image_mean(torch.cat(per_box), torch.tensor(image_index, device=device), len(images))
        return loss, {"boxes": float(len(jobs))}

    validate = None
    if val_source is not None:
        size = validation_size(val_source, input_size, cfg.frame_size())
        val = validation_images(val_source, size)
        validate = lambda: mask_validation(detector, segmenter, val, cfg, device, size)  # noqa: E731

    return TrainLoop(cfg.loop_config("segmenter", recipe), segmenter, dataset, step, validate).run()
