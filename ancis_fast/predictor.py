"""`Predictor`: the one entry point for segmenting cells in images."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .instances import Instances
from .masks import PatchMasks, tight_patch
from .io.readers import read_image
from .models import build_detector, build_segmenter, default_weights, load_weights, make_priors
from .models.weights import WeightsSource
from .pipeline import reference
from .pipeline.preprocess import Normalization, preprocess
from .streaming import FrameStream
from .tiling import predict_tiled

BACKENDS = ("reference",)
AUTO_TILE_ABOVE = 2048  # px; larger images are tiled at native resolution
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
        self.auto_tile_above = AUTO_TILE_ABOVE
        self._lock = threading.Lock()

    def predict(self, image: ImageInput, tile: Optional[int] = None, overlap: int = 64) -> Instances:
        """Segment one image (path or array); see :class:`~ancis_fast.Instances`.

        Images whose longer side exceeds ``auto_tile_above`` (default 2048 px), or any
        image when ``tile`` is given, are segmented in ``tile x tile`` pieces at native
        resolution (default: the input size) that overlap by ``overlap`` px and are
        stitched so that a cell on a seam is one instance (see :mod:`ancis_fast.tiling`).
        """
        array = self._load(image)
        if tile is None and max(array.shape[:2]) > self.auto_tile_above:
            tile = max(self.config.input_size)
        if tile is not None:
            return predict_tiled(array, self._predict_array, tile, overlap)
        return self._predict_array(array)

    def predict_batch(self, images: Sequence[ImageInput], tile: Optional[int] = None, overlap: int = 64,
                      progress: bool = False) -> List[Instances]:
        """Segment several images; results in input order."""
        items = tqdm(images, desc="segmenting", unit="img") if progress else images
        return [self.predict(image, tile, overlap) for image in items]

    def stream(self, frames: Iterable[ImageInput], max_queue: int = 4, drop_oldest: bool = False) -> FrameStream:
        """Segment a sequence of frames (a live feed, a video, a folder) with decoding and
        pre-processing overlapped with inference in a background thread.

        Returns an iterator of :class:`Instances` in input order (frames discarded under
        ``drop_oldest`` are skipped); ``.stats.summary()`` gives latency and FPS. Frames are
        segmented whole (no tiling).
        """
        return FrameStream(frames, self._prepare, self._infer, max_queue, drop_oldest,
                           pin_memory=self.device.type == "cuda")

    @staticmethod
    def _load(image: ImageInput) -> np.ndarray:
        return read_image(image) if isinstance(image, (str, os.PathLike)) else image

    def _prepare(self, image: ImageInput) -> Tuple[torch.Tensor, Tuple[int, int]]:
        return preprocess(self._load(image), self.config.input_size, self.config.normalization)

    def _predict_array(self, array: np.ndarray) -> Instances:
        return self._infer(*self._prepare(array))

    def _infer(self, batch: torch.Tensor, original_size: Tuple[int, int]) -> Instances:
        # One inference at a time: the models are shared, and parallel calls would only
        # oversubscribe the cores. Pre-processing and I/O stay outside the lock.
        with self._lock:
            return self._predict_reference(batch.to(self.device, non_blocking=True), original_size)

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
