"""ANCIS network definitions; module and parameter names are the release's state-dict keys."""
from .detector import Detector, build_detector
from .priors import make_priors
from .segmenter import Segmenter, build_segmenter
from .weights import CheckpointError, default_weights, infer_backbone, load_weights, read_state_dict

__all__ = [
    "Detector", "Segmenter", "build_detector", "build_segmenter", "make_priors",
    "load_weights", "read_state_dict", "infer_backbone", "default_weights", "CheckpointError",
]
