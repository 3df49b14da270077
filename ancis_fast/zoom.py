"""Zoom and scale: segment nuclei nearer the size the model segments best.

The detector's finest priors lie on a stride-8 grid of the network input and start at
20 px (spec §3 at a 512 input). Nuclei closer together than about two cells of that grid
compete for the same priors, and many are lost: on crowded images of 7-10 px nuclei the
bundled model finds 65-90 % of them. Enlarging the image so that the network sees it at
``zoom`` times its input size, and segmenting that in input-size tiles (the scale the model
was trained at), recovers them; the cells are then mapped back to the original image.

``zoom="auto"`` (the default) segments the image once as the spec does, then looks at
what it found (:func:`auto_scale`, then :func:`auto_zoom`):

- **size**: when the plain resize left the nuclei more than :data:`AUTO_SCALE_BAND` times
  smaller or larger than :data:`BEST_DIAMETER`, the image is segmented again scaled so that
  they measure it, but never enlarged beyond native resolution: large images (a 1024²
  bright-field image's 19 px nuclei shrink to 9.5 px) get their pixels back, large nuclei
  are shrunk;
- **crowding**: otherwise, when the detections are crowded (at least
  :data:`AUTO_MIN_CELLS` of them with a median nearest-neighbour distance under
  :data:`AUTO_SPACING` px of network input), it is segmented again zoomed :data:`AUTO_ZOOM`.

Enlarging beyond native resolution is left to the crowding rule because it can do harm: in
sparse, noisy images enlarged pixel noise looks like tiny nuclei to the model
(docs/model.md, "Nucleus size", measures both sides).

A known nucleus diameter replaces the guess: ``diameter=D`` (image px) scales the image
by :func:`diameter_scale` so that nuclei measure :data:`BEST_DIAMETER` px at the network's
native resolution (enlarging or shrinking it), and segments it in input-size tiles.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

AUTO = "auto"
# the factor "auto" zooms crowded images by: 15/8 makes a 512 input 960 px, which 2 x 2
# input-size tiles with the default 64 px overlap cover (2.0 would take 3 x 3)
AUTO_ZOOM = 1.875
AUTO_MIN_CELLS = 50  # fewer detections are not a crowd
AUTO_SPACING = 14.0  # px of network input: median centre-to-nearest-centre distance of a crowd
MAX_ZOOM = 4.0
# "auto" rescales when the plain resize leaves nuclei more than this factor from BEST_DIAMETER
# (under 18 or over 72 px at the network), if the scale then changes by at least AUTO_MIN_CHANGE
AUTO_SCALE_BAND = 2.0
AUTO_MIN_CHANGE = 1.5
# nucleus diameter (px of a 512 px network input; priors scale with the input height,
# spec §3) the bundled model segments best; it was trained on 6-60 px nuclei at a 512
# input (docs/model.md, "Nucleus size", measures the choice)
BEST_DIAMETER = 36.0
BEST_DIAMETER_HEIGHT = 512
MIN_SCALE, MAX_SCALE = 1 / 16, 8.0  # image px -> network px factors a diameter may ask for
FIT_SLACK = 1.125  # a scaled image at most this much larger than the input is fitted to it

Zoom = Union[str, float]


def check_zoom(zoom: Zoom) -> Zoom:
    """``zoom`` as ``"auto"`` or a float in ``[1, MAX_ZOOM]``; ``ValueError`` otherwise."""
    if isinstance(zoom, str):
        if zoom == AUTO:
            return zoom
        try:
            zoom = float(zoom)
        except ValueError:
            raise ValueError(f"zoom={zoom!r}; expected 'auto' or a number from 1 to {MAX_ZOOM:g}") from None
    if isinstance(zoom, bool) or not isinstance(zoom, (int, float)) or not 1.0 <= zoom <= MAX_ZOOM:
        raise ValueError(f"zoom={zoom!r}; expected 'auto' or a number from 1 (the spec's plain resize) to "
                         f"{MAX_ZOOM:g}")
    return float(zoom)


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """``[N,2]`` ``(cy, cx)`` of ``(y1, x1, y2, x2)`` boxes ``[N,4]``."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def median_spacing(centres: np.ndarray, chunk: int = 1024) -> float:
    """Median over points of the distance to the nearest other point (``inf`` for fewer
    than 2 points). ``centres``: ``[N,2]``; memory ``chunk x N``."""
    points = torch.as_tensor(np.asarray(centres, np.float64).reshape(-1, 2))
    if len(points) < 2:
        return float("inf")
    nearest = []
    for start in range(0, len(points), chunk):
        block = torch.cdist(points[start : start + chunk], points)
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = float("inf")
        nearest.append(block.min(dim=1).values)
    return float(torch.cat(nearest).median())


def auto_zoom(boxes: np.ndarray, image_size: Tuple[int, int], input_size: Tuple[int, int]) -> float:
    """The zoom ``"auto"`` picks from one image's detections: :data:`AUTO_ZOOM` when they
    are crowded, else 1.

    Args:
        boxes: ``[N,4]`` ``(y1, x1, y2, x2)`` in pixels of the ``image_size`` ``(H, W)``
            image; ``input_size``: the network's ``(H, W)`` (spacing is measured there).
    """
    if len(boxes) < AUTO_MIN_CELLS:
        return 1.0
    to_network = np.array([input_size[0] / image_size[0], input_size[1] / image_size[1]])
    return AUTO_ZOOM if median_spacing(box_centres(boxes) * to_network) < AUTO_SPACING else 1.0


def median_diameter(areas: np.ndarray) -> float:
    """Median equivalent diameter ``sqrt(4 area / pi)`` of the non-zero ``areas`` (px);
    0 when there are none."""
    areas = np.asarray(areas, np.float64).reshape(-1)
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4.0 * areas / np.pi))) if len(areas) else 0.0


def auto_scale(areas: np.ndarray, image_size: Tuple[int, int], input_size: Tuple[int, int],
               prior_height: Optional[int] = None) -> Optional[float]:
    """The scale (network px per image px) ``zoom="auto"`` segments an image again at, from
    the mask ``areas`` (image px) of the cells its plain pass found; ``None``: keep it.

    ``wanted`` is :func:`diameter_scale` of the cells' median diameter and ``plain`` the
    plain resize's (geometric mean of ``input_size / image_size``). Nuclei more than
    :data:`AUTO_SCALE_BAND` times too large (``wanted < plain / band``) get ``wanted``;
    too small, ``min(wanted, 1)``: enlarged at most to native resolution. The scale is used
    when it differs from ``plain`` by at least :data:`AUTO_MIN_CHANGE` either way.
    ``prior_height``: see :func:`diameter_scale` (default: the input height)."""
    diameter = median_diameter(areas)
    if diameter <= 0:
        return None
    try:
        check_diameter(diameter)
    except ValueError:  # a size no scale in range brings to the best one
        return None
    wanted = diameter_scale(diameter, prior_height or input_size[0], image_size, input_size)
    plain = math.sqrt(input_size[0] * input_size[1] / (image_size[0] * image_size[1]))
    if wanted < plain / AUTO_SCALE_BAND:
        scale = wanted
    elif wanted > plain * AUTO_SCALE_BAND:
        scale = min(wanted, 1.0)
    else:
        return None
    return scale if abs(math.log(scale / plain)) >= math.log(AUTO_MIN_CHANGE) else None


def zoomed_size(input_size: Tuple[int, int], zoom: float) -> Tuple[int, int]:
    """``(H, W)`` an image is resized to so that the network sees it ``zoom`` times
    larger than at ``input_size``."""
    return scaled_size(input_size, zoom)


def check_diameter(diameter: Optional[float]) -> Optional[float]:
    """``diameter`` (px) as a float, ``None`` kept; ``ValueError`` unless the scale it asks
    for lies in ``[MIN_SCALE, MAX_SCALE]``."""
    if diameter is None:
        return None
    low, high = BEST_DIAMETER / MAX_SCALE, BEST_DIAMETER / MIN_SCALE
    if isinstance(diameter, bool) or not isinstance(diameter, (int, float)) or not low <= diameter <= high:
        raise ValueError(f"diameter={diameter!r}; expected the typical nucleus diameter in image pixels, "
                         f"from {low:g} to {high:g} (or None to let zoom decide)")
    return float(diameter)


def diameter_scale(diameter: float, prior_height: int = BEST_DIAMETER_HEIGHT,
                   image_size: Optional[Tuple[int, int]] = None, input_size: Optional[Tuple[int, int]] = None) -> float:
    """Factor (network px per image px) that brings nuclei of ``diameter`` image px to
    :data:`BEST_DIAMETER` at a network whose priors are sized for ``prior_height``.

    Given ``image_size`` and ``input_size`` (``(H, W)``), a factor that would make the image
    at most :data:`FIT_SLACK` times the input is lowered to fit the input: one tile instead
    of four, for nuclei at most 11 % smaller."""
    scale = BEST_DIAMETER * prior_height / BEST_DIAMETER_HEIGHT / diameter
    if image_size is not None and input_size is not None:
        fit = min(i / (s * scale) for s, i in zip(image_size, input_size))
        if 1 / FIT_SLACK <= fit < 1:
            scale *= fit
    return scale


def scaled_size(image_size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """``(H, W)`` of an ``image_size`` image scaled by ``scale`` (at least 1 px)."""
    return max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale))
