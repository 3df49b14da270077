"""`Predictor`: the one entry point for segmenting cells in images."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .instances import Instances
from .masks import PatchMasks, tight_patch
from .io.readers import read_image
from .models import build_detector, build_segmenter, default_weights, load_weights, make_priors
from .models.weights import WeightsSource
from .pipeline import reference
from .pipeline.preprocess import Normalization, preprocess

BACKENDS = ("reference",)
ImageInput = Union[str, os.PathLike, np.ndarray]


@dataclass(frozen=True)
class PredictorConfig:
    """Inference settings. ``input_size`` is the network's ``(H, W)``."""

    input_size: Tuple[int, int] = (512, 512)
    conf_thresh: float = 0.3
    nms_thresh: float = 0.3
    seg_thresh: float = 0.5
    normalization: Normalization = Normalization()

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) < 64:
            raise ValueError(f"input_size={self.input_size}; expected (H, W), each >= 64 (multiples of 64 are best)")
        for name in ("conf_thresh", "nms_thresh", "seg_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}; expected a value in [0, 1]")


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
    return device


class Predictor:
    """Segment every cell of microscope images with ANCIS.

    Example::

        p = Predictor()                         # bundled ResNet-50 model, CPU, reference path
        inst = p.predict("nuclei.png")          # or an HxW / HxWx3 (BGR) / HxWx4 array
        labels = inst.label_image()

    Args:
        detector_weights, segmenter_weights: checkpoint paths or state dicts (release
            format); ``None`` for both uses the bundled default model.
        backbone: detector trunk, ``resnet50`` (release default), ``resnet101``, ``resnet152``.
        backend: execution path; ``"reference"`` is the spec-exact PyTorch path.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        input_size: network input ``(H, W)``; images are resized to it and back.
        conf_thresh, nms_thresh, seg_thresh: detection score threshold (strict ``>``),
            NMS IoU threshold, mask probability threshold (``>=``).
        normalize, percentiles: how non-8-bit images become 8-bit (see
            :mod:`ancis_fast.pipeline.preprocess`); 8-bit images are unchanged by default.
    """

    def __init__(
        self,
        detector_weights: Optional[WeightsSource] = None,
        segmenter_weights: Optional[WeightsSource] = None,
        backbone: str = "resnet50",
        backend: str = "reference",
        device: Union[str, torch.device] = "cpu",
        input_size: Tuple[int, int] = (512, 512),
        conf_thresh: float = 0.3,
        nms_thresh: float = 0.3,
        seg_thresh: float = 0.5,
        normalize: str = "auto",
        percentiles: Tuple[float, float] = (1.0, 99.8),
    ):
        if (detector_weights is None) != (segmenter_weights is None):
            raise ValueError("give both detector_weights and segmenter_weights, or neither for the bundled model")
        if detector_weights is None:
            detector_weights, segmenter_weights = default_weights()
        detector = load_weights(build_detector(backbone), detector_weights)
        segmenter = load_weights(build_segmenter(backbone), segmenter_weights)
        self._setup(detector, segmenter, backend, device, PredictorConfig(
            tuple(input_size), conf_thresh, nms_thresh, seg_thresh, Normalization(normalize, tuple(percentiles))))

    @classmethod
    def from_models(cls, detector: nn.Module, segmenter: nn.Module, backend: str = "reference",
                    device: Union[str, torch.device] = "cpu", config: PredictorConfig = PredictorConfig()) -> "Predictor":
        """Wrap already-built models (e.g. fresh from training)."""
        predictor = cls.__new__(cls)
        predictor._setup(detector, segmenter, backend, device, config)
        return predictor

    def _setup(self, detector: nn.Module, segmenter: nn.Module, backend: str, device, config: PredictorConfig) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not available; choose one of {BACKENDS}")
        self.backend = backend
        self.device = _resolve_device(device)
        self.config = config
        self.detector = detector.to(self.device).eval()
        self.segmenter = segmenter.to(self.device).eval()
        self.priors = make_priors(*config.input_size, device=self.device)

    def predict(self, image: ImageInput) -> Instances:
        """Segment one image (path or array); see :class:`~ancis_fast.Instances`."""
        array = read_image(image) if isinstance(image, (str, os.PathLike)) else image
        batch, original_size = preprocess(array, self.config.input_size, self.config.normalization)
        return self._predict_reference(batch.to(self.device), original_size)

    def predict_batch(self, images: Sequence[ImageInput]) -> List[Instances]:
        """Segment several images; results in input order."""
        return [self.predict(image) for image in images]

    @torch.inference_mode()
    def _predict_reference(self, batch: torch.Tensor, original_size: Tuple[int, int]) -> Instances:
        cfg = self.config
        locs, conf, features = self.detector(batch)
        detected = reference.detect(locs, conf, self.priors, cfg.conf_thresh, cfg.nms_thresh)
        boxes, scores, labels = reference.detections_of_image(detected[0].cpu())
        keep = scores >= cfg.conf_thresh  # spec §6 pastes these; Detect already kept only > conf_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        features = [self.segmenter.encode_c0(features[0])] + list(features[1:])
        probs = reference.segment(self.segmenter, features, boxes)
        patches, origins = [], []
        for prob, box in zip(probs, boxes):
            dense = (np.zeros(original_size, bool) if prob is None else
                     reference.paste_mask(prob.float().cpu().numpy(), box, cfg.input_size, original_size, cfg.seg_thresh))
            patch, origin = tight_patch(dense)  # one dense mask at a time keeps memory bounded
            patches.append(patch)
            origins.append(origin)
        masks = PatchMasks(patches, np.array(origins, np.int64).reshape(-1, 2), original_size)
        scale = torch.tensor([original_size[0] / cfg.input_size[0], original_size[1] / cfg.input_size[1]] * 2)
        return Instances((boxes * scale).numpy(), scores.numpy(), masks, labels.numpy())
