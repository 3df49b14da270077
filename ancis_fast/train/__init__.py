"""Training of the ANCIS detector and segmenter (spec §7)."""
from .detector import DetectorTrainConfig, train_detector
from .optim import DETECTOR_RECIPES, SEGMENTER_RECIPES, Recipe
from .segmenter import SegmenterTrainConfig, train_segmenter

__all__ = ["DetectorTrainConfig", "train_detector", "SegmenterTrainConfig", "train_segmenter", "Recipe",
           "DETECTOR_RECIPES", "SEGMENTER_RECIPES"]
