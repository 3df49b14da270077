"""The views of an image: the network inputs it is segmented through, and how their cells
come back together as the image's cells.

Every way :class:`~ancis_fast.Predictor` segments an image is a list of views, segmented
in batches through one pipeline and merged by one rule (:meth:`ImagePlan.merge`):

- **whole**: one view, the whole image resized to the network input (spec §1); its cells
  are the image's.
- **tiles**: the image, converted to 8-bit as a whole (so every tile has the same
  contrast), cut into ``tile x tile`` windows (see :mod:`ancis_fast.tiling`), each the
  network input as it is (native resolution: a ``tile x tile`` input); the windows'
  cells are stitched.
- **scaled**: the 8-bit image resized (``zoom``: so that the network sees it ``zoom`` times
  its input size; ``diameter``: by :func:`~ancis_fast.zoom.diameter_scale`), cut into
  input-size tiles; the tiles' cells are stitched in the resized image and mapped back.

:func:`plan_image` picks one of these from the settings. ``zoom="auto"`` plans the whole
image first; when its cells' size or crowding asks for it (:mod:`ancis_fast.zoom`) the image
is planned again, scaled (:func:`scaled_plan`) or zoomed (:func:`zoomed_plan`), as a second
round.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .instances import Instances
from .pipeline.preprocess import Normalization, to_uint8
from .tiling import Window, pad_to_tile, stitch, tile_windows
from .zoom import AUTO, diameter_scale, scaled_size, zoomed_size

if TYPE_CHECKING:
    from .config import PredictorConfig

WHOLE, TILES, SCALED = "whole", "tiles", "scaled"
AUTO_TILE_ABOVE = 2048  # px; images with a longer side are tiled at native resolution
Size = Tuple[int, int]  # (H, W)


@dataclass(frozen=True)
class View:
    """One network input of an image.

    ``window`` ``(y1, x1, y2, x2)`` lies in the image scaled to ``scaled_size`` ``(H, W)``
    (the image's own size at native resolution); it is padded to ``tile x tile`` (``None``:
    the whole image, not padded) and resized to ``input_size`` ``(H, W)``, the network input."""

    image: int  # index of the image among those planned together
    image_size: Size
    scaled_size: Size
    window: Window
    tile: Optional[int]
    input_size: Size

    @property
    def scale(self) -> Tuple[float, float]:
        """``(sy, sx)``: scaled-image pixels per image pixel."""
        return self.scaled_size[0] / self.image_size[0], self.scaled_size[1] / self.image_size[1]

    @property
    def whole(self) -> bool:
        return self.tile is None

    def cut(self, pixels: np.ndarray) -> np.ndarray:
        """This view's pixels of ``pixels`` (the image :meth:`ImagePlan.pixels` gives)."""
        if self.whole:
            return pixels
        y1, x1, y2, x2 = self.window
        return pad_to_tile(pixels[y1:y2, x1:x2], self.tile)


@dataclass
class ImagePlan:
    """The views of one image and how their cells become the image's.

    ``meta`` goes into the result's ``meta`` (``{"zoom": z}``, ``{"scale": s}`` or nothing);
    ``max_detections``, if set, keeps that many best cells of the stitched scaled image."""

    kind: str  # WHOLE, TILES or SCALED
    views: List[View]
    meta: Dict[str, float] = field(default_factory=dict)
    max_detections: Optional[int] = None

    @property
    def image(self) -> int:
        return self.views[0].image

    @property
    def image_size(self) -> Size:
        return self.views[0].image_size

    @property
    def scaled_size(self) -> Size:
        return self.views[0].scaled_size

    def pixels(self, array: np.ndarray, normalization: Normalization) -> np.ndarray:
        """What the views are cut from: ``array`` itself for a whole view (the pipeline's
        pre-processing converts it), else ``array`` converted to 8-bit as a whole (and
        resized to :attr:`scaled_size` for a scaled plan)."""
        if self.kind == WHOLE:
            return array
        image = to_uint8(array, normalization)
        if self.kind == TILES:
            return image
        height, width = self.scaled_size
        shrink = height * width < image.shape[0] * image.shape[1]
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def merge(self, found: Sequence[Instances]) -> Instances:
        """The image's cells from ``found`` (one Instances per view, in the view's padded
        window pixels; a whole view's in image pixels), sorted by descending score."""
        if len(found) != len(self.views):
            raise ValueError(f"{len(found)} results for the {len(self.views)} views of image {self.image}")
        if self.kind == WHOLE:
            merged = found[0]
        else:
            merged = stitch(found, [view.window for view in self.views], self.scaled_size)
            if self.kind == SCALED:  # the limit is per image, not per tile
                merged = merged[: self.max_detections].resized(self.image_size)
        merged.meta.update(self.meta)
        return merged


def plan_image(image: int, image_size: Size, config: "PredictorConfig", tile: Optional[int] = None,
               overlap: int = 64, auto_tile_above: int = AUTO_TILE_ABOVE) -> ImagePlan:
    """The first round's views of image number ``image`` of ``image_size`` ``(H, W)``.

    In order of precedence: ``config.diameter`` scales the image (``tile`` must then be
    ``None``); ``tile``, or a longer side above ``auto_tile_above``, cuts native ``tile x
    tile`` tiles (default: ``config.tile_size``) overlapping by ``overlap``; a fixed
    ``config.zoom`` above 1 zooms it; otherwise (zoom 1 or ``"auto"``) it is one whole view."""
    input_size = tuple(config.input_size)
    if config.diameter is not None:
        if tile is not None:
            raise ValueError(f"tile={tile} and diameter={config.diameter:g}: give one (with a diameter the scaled "
                             "image is segmented in input-size tiles)")
        scale = diameter_scale(config.diameter, config.prior_height or input_size[0], image_size, input_size)
        return scaled_plan(image, image_size, scaled_size(image_size, scale), input_size, overlap,
                           {"scale": scale}, config.max_detections)
    if tile is not None or max(image_size) > auto_tile_above:
        return tiled_plan(image, image_size, tile or config.tile_size, overlap)
    if config.zoom not in (AUTO, 1.0):
        return zoomed_plan(image, image_size, config.zoom, input_size, overlap, config.max_detections)
    return whole_plan(image, image_size, input_size)


def whole_plan(image: int, image_size: Size, input_size: Size) -> ImagePlan:
    """One view: the whole image resized to ``input_size`` (``meta["zoom"] = 1``)."""
    view = View(image, image_size, image_size, (0, 0, *image_size), None, input_size)
    return ImagePlan(WHOLE, [view], {"zoom": 1.0})


def tiled_plan(image: int, image_size: Size, tile: int, overlap: int) -> ImagePlan:
    """Native ``tile x tile`` windows overlapping by ``overlap``, row by row, each a
    ``tile x tile`` network input."""
    views = [View(image, image_size, image_size, window, tile, (tile, tile))
             for window in tile_windows(*image_size, tile, overlap)]
    return ImagePlan(TILES, views)


def zoomed_plan(image: int, image_size: Size, zoom: float, input_size: Size, overlap: int,
                max_detections: Optional[int] = None) -> ImagePlan:
    """The image resized so that the network sees it ``zoom`` times its input size
    (:func:`~ancis_fast.zoom.zoomed_size`), in input-size tiles (``meta["zoom"]``)."""
    return scaled_plan(image, image_size, zoomed_size(input_size, zoom), input_size, overlap, {"zoom": zoom},
                       max_detections)


def scaled_plan(image: int, image_size: Size, size: Size, input_size: Size, overlap: int,
                meta: Dict[str, float], max_detections: Optional[int] = None) -> ImagePlan:
    """The image resized to ``size`` ``(H, W)``, cut into tiles of the input's shorter side."""
    tile = min(input_size)
    views = [View(image, image_size, tuple(size), window, tile, input_size)
             for window in tile_windows(*size, tile, overlap)]
    return ImagePlan(SCALED, views, dict(meta), max_detections)


def batches(views: Sequence[View], batch_size: int) -> Iterator[List[View]]:
    """``views`` in order, ``batch_size`` at a time; a batch holds one input size (a new
    size starts a new batch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    batch: List[View] = []
    for view in views:
        if batch and (len(batch) == batch_size or view.input_size != batch[0].input_size):
            yield batch
            batch = []
        batch.append(view)
    if batch:
        yield batch
