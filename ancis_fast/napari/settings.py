"""The widget's model and inference settings, and the predictors built from them: one per
settings, reused while they stay the same; the checkpoints read once per model."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from torch import nn

from .. import Predictor
from ..models import build_detector, build_segmenter, default_weights, load_weights


@dataclass(frozen=True)
class SegmentSettings:
    """What the **Segment cells** widget asks for. ``detector_path`` and ``segmenter_path``
    are a checkpoint pair, or both ``None`` for the bundled model; ``diameter`` ``None``
    means unknown (``zoom="auto"``); the rest are :class:`~ancis_fast.Predictor` arguments
    and :class:`~ancis_fast.PredictorConfig` fields of the same names."""

    detector_path: Optional[str] = None
    segmenter_path: Optional[str] = None
    backbone: str = "resnet50"
    device: str = "cpu"
    backend: str = "auto"
    precision: str = "fp32"
    diameter: Optional[float] = None
    conf_thresh: float = 0.3
    min_size: int = 0

    def __post_init__(self) -> None:
        if (self.detector_path is None) != (self.segmenter_path is None):
            raise ValueError("choose both checkpoints, detector and segmenter (a mask head is trained on the "
                             "features of one detector), or the bundled model")

    @property
    def model(self) -> Tuple[Optional[str], Optional[str], str]:
        """What identifies the networks' weights."""
        return self.detector_path, self.segmenter_path, self.backbone


class PredictorCache:
    """``get(settings)`` gives the predictor for ``settings``: the one built last when they
    have not changed, else a new one; networks already read from checkpoints are reused
    (only the pipeline is prepared again). Safe to call from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: Dict[Tuple, Tuple[nn.Module, nn.Module]] = {}
        self._predictor: Optional[Predictor] = None
        self._settings: Optional[SegmentSettings] = None

    def get(self, settings: SegmentSettings) -> Predictor:
        with self._lock:
            if self._predictor is None or settings != self._settings:
                detector, segmenter = self._networks(settings)
                self._predictor = Predictor.from_models(
                    detector, segmenter, backend=settings.backend, device=settings.device,
                    precision=settings.precision, diameter=settings.diameter, conf_thresh=settings.conf_thresh,
                    min_size=settings.min_size)
                self._settings = settings
            return self._predictor

    def _networks(self, settings: SegmentSettings) -> Tuple[nn.Module, nn.Module]:
        if settings.model not in self._models:
            detector_weights, segmenter_weights = (settings.detector_path, settings.segmenter_path)
            if detector_weights is None:
                detector_weights, segmenter_weights = default_weights()
            self._models = {settings.model: (load_weights(build_detector(settings.backbone), detector_weights),
                                             load_weights(build_segmenter(settings.backbone), segmenter_weights))}
        return self._models[settings.model]
