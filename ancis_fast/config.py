"""`PredictorConfig`: every inference setting of a :class:`~ancis_fast.Predictor`, in one place.

``Predictor(**overrides)``, the CLI's options and the settings stored in exported files all
read their names, defaults and checks from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .pipeline.preprocess import Normalization
from .zoom import AUTO, Zoom, check_diameter, check_zoom

#: the fast backends' mask stages (see ``PredictorConfig.mode``)
MODES = ("fast", "exact")
#: fast mode's level-0 crop lengths (px; 6, then steps of about 1.25x): per axis, a box is decoded
#: at the one nearest its native level-0 length (in log scale), so shapes are pairs of these. One
#: fixed size for every box loses much where boxes are far from it; without 6, boxes of about 5 px
#: (stretched to 8) were the worst matched cells (docs/performance.md, "Fast mode")
CROP_SIZES = (6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)
#: every precision name a Predictor accepts; their dtypes: :mod:`ancis_fast.backends.precision`
PRECISION_NAMES = ("fp32", "fp16", "bf16", "int8")


def check_crop_sizes(sizes: Sequence[int]) -> Tuple[int, ...]:
    """``sizes`` as a tuple if they are usable fast-mode crop sizes, else a ``ValueError``."""
    values = tuple(sizes)
    if (not values or any(isinstance(v, bool) or not isinstance(v, int) or not 4 <= v <= 512 for v in values)
            or list(values) != sorted(set(values))):
        raise ValueError(f"crop_sizes={values}; expected ascending, distinct integer crop sizes from 4 to 512 px")
    return values


@dataclass(frozen=True)
class PredictorConfig:
    """Inference settings. ``input_size`` is the network's ``(H, W)``.

    ``conf_thresh``, ``nms_thresh``, ``seg_thresh``: detection score threshold (strict
    ``>``), NMS IoU threshold, mask probability threshold (``>=``).

    ``normalize`` and ``percentiles``: how non-8-bit images become 8-bit (see
    :mod:`ancis_fast.pipeline.preprocess`; :attr:`normalization` holds both).

    ``mode``: the fast backends' mask stage: ``"fast"`` (static: each box decoded at the
    nearest of ``crop_sizes``, see :mod:`ancis_fast.pipeline.fast`) or ``"exact"`` (native
    crop sizes: the reference's masks up to float rounding).

    ``prior_height`` sizes the priors for that input height instead of ``input_size[0]``
    (spec §3 scales them with the input height): a model trained at a 512 input keeps its
    prior sizes when run at another input size, e.g. on 256 crops or 1024 tiles.

    ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"``): the dtype the fast
    backends run the detector and mask decoder in; detection, crop geometry and pasting stay
    fp32 (see :mod:`ancis_fast.backends.precision`).

    ``max_candidates`` (``None``: all) and ``max_detections`` bound the detection step per
    image: candidates above ``conf_thresh`` kept before NMS, detections kept after it. The
    release used 200 and 500 (spec §4), which caps a crowded image at far fewer cells than it
    holds (its 200 candidates include several per nucleus); ``max_candidates=200,
    max_detections=500`` reproduces it.

    ``zoom``: ``"auto"`` (default: the spec's resize to ``input_size``, then, when the cells
    found ask for it, the image again scaled or zoomed; see :mod:`ancis_fast.zoom`) or a
    factor from 1 to 4 by which images are enlarged beyond the spec's resize and segmented
    in input-size tiles, for crowded small nuclei; 1 is the spec's behaviour.

    ``diameter`` (image px, ``None``: unknown): the typical nucleus diameter; the image is
    scaled so that nuclei reach the size the model segments best and is segmented in
    input-size tiles, instead of ``zoom``. ``min_size`` (px): cells that show fewer pixels
    in the label image (after overlaps are resolved) are dropped.

    ``tile_size`` (px): the side of the native-resolution tiles that images too large to
    resize whole (or any image given ``tile``) are cut into when no size is given. A tile is
    segmented at native resolution: the network input is ``tile_size`` square, with the
    priors of ``prior_height`` (else ``input_size[0]``), so nuclei keep the pixel size the
    model was trained at. The default 1024 px gives the detector's self-attention enough of
    a cell's surroundings that moving the seams barely changes the cells; 512 is about 1.6x
    faster per pixel on a CPU (see docs/large-images.md).
    """

    input_size: Tuple[int, int] = (512, 512)
    conf_thresh: float = 0.3
    nms_thresh: float = 0.3
    seg_thresh: float = 0.5
    normalize: str = "auto"
    percentiles: Tuple[float, float] = (1.0, 99.8)
    mode: str = "fast"
    prior_height: Optional[int] = None
    precision: str = "fp32"
    max_candidates: Optional[int] = None
    max_detections: int = 1000
    crop_sizes: Tuple[int, ...] = CROP_SIZES
    zoom: Zoom = AUTO
    diameter: Optional[float] = None
    min_size: int = 0
    tile_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("input_size", "percentiles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.normalization  # checks normalize and percentiles
        if self.precision not in PRECISION_NAMES:
            raise ValueError(f"precision={self.precision!r}; expected one of {PRECISION_NAMES}")
        object.__setattr__(self, "zoom", check_zoom(self.zoom))
        object.__setattr__(self, "crop_sizes", check_crop_sizes(self.crop_sizes))
        object.__setattr__(self, "diameter", check_diameter(self.diameter))
        if self.diameter is not None and self.zoom != AUTO:
            raise ValueError(f"zoom={self.zoom!r} and diameter={self.diameter!r}: give one (a diameter sets the "
                             f"scale itself)")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, (int, np.integer)) or self.min_size < 0:
            raise ValueError(f"min_size={self.min_size!r}; expected a whole number of pixels >= 0")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates={self.max_candidates}; expected None (all) or a count >= 1")
        if self.max_detections < 1:
            raise ValueError(f"max_detections={self.max_detections}; expected a count >= 1")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {MODES} (used by the fast backends)")
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, (int, np.integer)) or self.tile_size < 64:
            raise ValueError(f"tile_size={self.tile_size!r}; expected a whole number of px >= 64 (e.g. 512 or 1024)")
        if len(self.input_size) != 2 or min(self.input_size) < 64:
            raise ValueError(f"input_size={self.input_size}; expected (H, W), each >= 64 (multiples of 64 are best)")
        for name in ("conf_thresh", "nms_thresh", "seg_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}; expected a value in [0, 1]")

    @property
    def normalization(self) -> Normalization:
        """``normalize`` and ``percentiles`` as the :class:`Normalization` preprocessing takes."""
        return Normalization(self.normalize, self.percentiles)

    def with_overrides(self, **overrides: Any) -> "PredictorConfig":
        """A copy with ``overrides`` (field names) changed; an unknown name is a ``TypeError``
        that lists the settings there are."""
        unknown = sorted(set(overrides) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}; PredictorConfig has {', '.join(FIELDS)}")
        return replace(self, **overrides) if overrides else self

    def to_dict(self) -> Dict[str, Any]:
        """The settings as JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: the setting names, in declaration order
FIELDS: Tuple[str, ...] = tuple(f.name for f in fields(PredictorConfig))

