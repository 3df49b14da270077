"""Image classes by appearance: fluorescence, stained tissue, bright-field.

The DSB 2018 images (and most microscopy a user brings) fall into three looks that a
model finds differently hard, so splits are stratified and results reported by them:

- ``fluorescence``: bright nuclei on a dark background (median brightness below
  :data:`DARK_BACKGROUND`, whatever the colour: a blue DAPI image is fluorescence);
- ``tissue``: a light background with colour (mean channel spread above
  :data:`COLOUR_SPREAD`): H&E and other stains;
- ``brightfield``: a light, gray background (dark nuclei on white).

Measured on 577 images of the DSB 2018 training set (docs/model.md, "Data"): fluorescence
medians are <= 60, the light images' >= 130; gray images have spread 0, the stained ones >= 11.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..pipeline.preprocess import Normalization, to_bgr8

FLUORESCENCE, TISSUE, BRIGHTFIELD = "fluorescence", "tissue", "brightfield"
IMAGE_CLASSES: Tuple[str, ...] = (FLUORESCENCE, TISSUE, BRIGHTFIELD)

#: median gray level (0-255) under which the background counts as dark
DARK_BACKGROUND = 100.0
#: mean over pixels of (max - min over the BGR channels), 0-255, above which an image has colour
COLOUR_SPREAD = 6.0
#: about this many pixels (a regular grid) are looked at
SAMPLE_PIXELS = 65536


def appearance(image: np.ndarray, normalization: Normalization = Normalization()) -> Tuple[float, float]:
    """``(median brightness, mean channel spread)`` of an image, both on the 0-255 scale
    of its 8-bit BGR version (``image``: ``HxW`` or ``HxWxC``, any depth the readers return)."""
    bgr = to_bgr8(image, normalization)
    step = max(1, int((bgr.shape[0] * bgr.shape[1] / SAMPLE_PIXELS) ** 0.5))
    bgr = bgr[::step, ::step].astype(np.int16)  # a regular sample of the pixels is plenty for two statistics
    brightness = float(np.median(bgr.mean(axis=2)))
    spread = float((bgr.max(axis=2) - bgr.min(axis=2)).mean())
    return brightness, spread


def image_class(image: np.ndarray, normalization: Normalization = Normalization()) -> str:
    """The class of an image by how it looks: one of :data:`IMAGE_CLASSES`."""
    brightness, spread = appearance(image, normalization)
    if brightness < DARK_BACKGROUND:
        return FLUORESCENCE
    return TISSUE if spread > COLOUR_SPREAD else BRIGHTFIELD
