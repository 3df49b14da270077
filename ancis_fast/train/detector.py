"""Detector training (spec §7): MultiBox loss with hard-negative mining on matched priors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..data.sample import Sample, boxes_from_labels
from ..evaluate import Evaluator
from ..models import build_detector, load_weights, make_priors
from ..pipeline import reference
from ..pipeline.preprocess import to_network_input
from .config import StageConfig
from .data import ExampleDataset, validation_images, validation_size
from .loop import TrainLoop, resolve_device
from .loss import multibox_loss
from .matching import match_batch
from .optim import DETECTOR_RECIPES, Recipe


@dataclass(frozen=True, kw_only=True)
class DetectorTrainConfig(StageConfig):
    """Detector training settings (see :class:`~.config.StageConfig`)."""

    recipes: ClassVar[Dict[str, Recipe]] = DETECTOR_RECIPES


#: detector parts that get the from-scratch initialisation (the ResNet-style trunk and
#: extra layers); attention, fusion and heads keep PyTorch's default, milder init, which
#: keeps the unscaled attention logits (spec §2) moderate at the start
TRUNK_PARTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "new_layer1", "new_layer2")


def init_from_scratch(model: nn.Module) -> nn.Module:
    """He-normal convolutions and unit BatchNorm in the trunk, with a zero scale on the
    last BatchNorm of every residual block, so that a randomly initialised deep trunk
    starts as a near identity and trains stably without ImageNet weights."""
    parts = [getattr(model, name) for name in TRUNK_PARTS]
    for module in (m for part in parts for m in part.modules()):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in (m for part in parts for m in part.modules()):
        last_bn = getattr(module, "bn3", None) if hasattr(module, "conv3") else getattr(module, "bn2", None)
        if hasattr(module, "downsample") and isinstance(last_bn, nn.BatchNorm2d):
            nn.init.zeros_(last_bn.weight)
    return model


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def detect_images(detector: nn.Module, images: Sequence[np.ndarray], priors: Tensor, conf_thresh: float,
                  nms_thresh: float, batch_size: int = 8) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Reference detections of 8-bit BGR images already at the input size.

    Returns per image ``(boxes [K,4] float32 (y1,x1,y2,x2), scores [K])`` in input pixels.
    """
    device = priors.device
    height, width = images[0].shape[:2]
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = torch.stack([torch.from_numpy(to_network_input(im, (height, width))) for im in chunk]).to(device)
        locs, conf, _ = detector(batch)
        detected = reference.detect(locs.float(), conf.float(), priors, conf_thresh, nms_thresh)
        for b in range(len(chunk)):
            boxes, scores, _ = reference.detections_of_image(detected[b].cpu())
            out.append((boxes.numpy(), scores.numpy()))
    return out


def box_validation(detector: nn.Module, val: Sequence[Tuple[np.ndarray, np.ndarray, str]], priors: Tensor,
                   conf_thresh: float, nms_thresh: float) -> Dict[str, float]:
    """Box AP@0.5/0.7 (VOC-07, strict ``>``), DSB-style box score and matching stats on
    validation images (in the network frame)."""
    was_training = detector.training
    detector.eval()
    evaluator = Evaluator()
    detections = detect_images(detector, [v[0] for v in val], priors, conf_thresh, nms_thresh)
    for (boxes, scores), (_, labels, name) in zip(detections, val):
        evaluator.add_boxes(boxes, scores, boxes_from_labels(labels)[0], name)
    detector.train(was_training)
    summary = evaluator.summary()
    return {k: float(summary[k]) for k in ("ap50", "ap70", "dsb_map", "precision", "recall", "f1")} | {
        "num_pred": float(summary["num_pred"]), "num_gt": float(summary["num_gt"])}


def train_detector(cfg: DetectorTrainConfig, train_source: Sequence[Sample],
                   val_source: Optional[Sequence[Sample]] = None) -> Dict[str, Any]:
    """Train an ANCIS detector; see :class:`DetectorTrainConfig`.

    Args:
        train_source: training samples (a dataset folder reader, a synthetic source, a list).
        val_source: validation samples, scored every ``val_every`` epochs (box AP@0.5
            selects ``detector_best.pt``).
    Returns:
        summary dict: weight paths, best AP@0.5, history.
    """
    recipe = cfg.resolved_recipe()
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg.backbone)
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
    else:
        init_from_scratch(model)
    model.to(device)
    priors = make_priors(*cfg.input_size, device=device, scale_height=cfg.prior_height)
    dataset = ExampleDataset(train_source, cfg.input_size, cfg.augmentation(), cfg.seed)

    def step(batch: Dict[str, Any]) -> Tuple[Tensor, Dict[str, float]]:
        images = batch["images"].to(device, non_blocking=True)
        loc_targets, labels = match_batch([b.to(device) for b in batch["boxes"]], priors, cfg.match_iou)
        with _autocast(device, cfg.amp):
            locs, conf, _ = model(images)
        loc_loss, conf_loss = multibox_loss(locs.float(), conf.float(), loc_targets, labels)
        return loc_loss + conf_loss, {"loc": loc_loss.detach().item(), "conf": conf_loss.detach().item()}

    validate = None
    if val_source is not None:
        size = validation_size(val_source, cfg.input_size, cfg.frame_size())
        val, val_priors = validation_images(val_source, size), make_priors(*size, device=device,
                                                                             scale_height=cfg.prior_height)
        validate = lambda: box_validation(model, val, val_priors, cfg.conf_thresh, cfg.nms_thresh)  # noqa: E731

    return TrainLoop(cfg.loop_config("detector", recipe), model, dataset, step, validate).run()
