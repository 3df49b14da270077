"""Image -> network input (spec §1), with the conversions microscopy needs.

An 8-bit BGR image goes through exactly the release's steps: float32, bilinear resize
(OpenCV ``INTER_LINEAR``) to the input size, divide by 255. Everything else is first
converted to 8-bit BGR:

- gray ``HxW`` or ``HxWx1`` -> three equal channels;
- ``HxWx4`` (BGRA) -> alpha dropped;
- 16-bit, other integer and float images -> percentile normalisation: values at the
  ``low``/``high`` percentiles (default 1 / 99.8, over all channels) map to 0 / 255,
  clipped, rounded to uint8. ``normalize="minmax"`` uses the min and max instead,
  ``"percentile"`` applies percentiles to 8-bit images too, ``"none"`` clips to [0, 255].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

NORMALIZE_MODES = ("auto", "percentile", "minmax", "none")


@dataclass(frozen=True)
class Normalization:
    """How non-8-bit images become 8-bit (see module docstring)."""

    mode: str = "auto"
    percentiles: Tuple[float, float] = (1.0, 99.8)

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize={self.mode!r}; expected one of {NORMALIZE_MODES}")
        low, high = self.percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles={self.percentiles}; expected 0 <= low < high <= 100")


def validate_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check shape, dtype and values; return ``image`` as an ``HxW`` or ``HxWxC`` array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or a path, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} has shape {image.shape}; expected HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA)")
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ValueError(f"{name} has {image.shape[2]} channels; expected 1 (gray), 3 (BGR) or 4 (BGRA)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"{name} has dtype {image.dtype}; expected an unsigned/signed integer or float type")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); replace them (e.g. np.nan_to_num) first")
    return image


def _scale_to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    data = image.astype(np.float32)
    if high <= low:  # a constant image carries no signal: treat it as background
        return np.zeros(image.shape, np.uint8)
    return np.clip(np.rint((data - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def to_uint8(image: np.ndarray, norm: Normalization = Normalization()) -> np.ndarray:
    """Convert any supported image to uint8 with the same channel layout."""
    image = validate_image(image)
    if norm.mode == "none" or (image.dtype == np.uint8 and norm.mode == "auto"):
        return image if image.dtype == np.uint8 else np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    if norm.mode == "minmax":
        low, high = float(image.min()), float(image.max())
    else:
        low, high = (float(v) for v in np.percentile(image, norm.percentiles))
    return _scale_to_uint8(image, low, high)


def to_bgr8(image: np.ndarray, norm: Normalization = Normalization()) -> np.ndarray:
    """Any supported image -> ``HxWx3`` uint8 BGR (contiguous)."""
    image = to_uint8(image, norm)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return np.ascontiguousarray(image)


def to_network_input(bgr8: np.ndarray, input_size: Tuple[int, int]) -> np.ndarray:
    """Spec §1 on an 8-bit BGR image: float32, INTER_LINEAR resize to ``input_size``
    ``(H, W)``, / 255. Returns ``[3,H,W]`` float32 (channels BGR)."""
    height, width = input_size
    data = cv2.resize(bgr8.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray((data / 255.0).transpose(2, 0, 1))


def preprocess(image: np.ndarray, input_size: Tuple[int, int], norm: Normalization = Normalization()) -> Tuple[Tensor, Tuple[int, int]]:
    """Image -> (``[1,3,H,W]`` float32 network input, original ``(H0, W0)``)."""
    bgr = to_bgr8(image, norm)
    return torch.from_numpy(to_network_input(bgr, input_size)).unsqueeze(0), bgr.shape[:2]
