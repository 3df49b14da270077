"""Training augmentation of spec §7, applied to an 8-bit BGR image and its label map.

Order (as in the release's SSD-style pipeline): brightness, contrast, channel permutation,
zoom-out (expand), random crop, flips, resize to the network size. Geometric steps move
the label map with the image, so boxes and masks are always re-derived from it
(:func:`~ancis_fast.data.sample.boxes_from_labels`) and stay consistent.

Choices the spec leaves open, documented here:

- each random step fires with probability ``p`` (0.5);
- photometric results are clipped to ``[0, 255]`` (a camera cannot record outside it);
- the zoom-out canvas is filled with the image's per-channel median (its background),
  not a constant, so that no artificial dark frame appears around bright images;
- the crop keeps an instance when the centre of its extent lies inside the crop, and
  removes the others from the label map (their visible parts become background);
- labels are resized with centre-aligned nearest neighbour (``INTER_NEAREST_EXACT``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from .sample import label_extents


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of :func:`augment`; defaults are the release's.

    Attributes:
        output_size: network input ``(H, W)``.
        p: probability of each random step.
        brightness: maximum absolute added offset (8-bit units).
        contrast: range of the contrast factor.
        channel_swap: randomly permute the BGR channels.
        max_expand: largest zoom-out factor (1 disables it).
        min_crop: smallest crop side, as a fraction of the side (1 disables cropping).
        flips: random horizontal and vertical flips.
        rot90: random multiples of 90 degrees (not in the release; off by default).
    """

    output_size: Tuple[int, int] = (512, 512)
    p: float = 0.5
    brightness: float = 32.0
    contrast: Tuple[float, float] = (0.5, 1.5)
    channel_swap: bool = True
    max_expand: float = 2.0
    min_crop: float = 0.9
    flips: bool = True
    rot90: bool = False

    def __post_init__(self) -> None:
        if len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(f"output_size={self.output_size}; expected (H, W) of positive ints")
        if self.max_expand < 1.0:
            raise ValueError(f"max_expand={self.max_expand}; expected >= 1 (1 disables the zoom-out)")
        if not 0.0 < self.min_crop <= 1.0:
            raise ValueError(f"min_crop={self.min_crop}; expected a fraction in (0, 1]")


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness offset, contrast factor and channel permutation on float32 ``HxWx3``."""
    if rng.random() < cfg.p:
        image = image + np.float32(rng.uniform(-cfg.brightness, cfg.brightness))
    if rng.random() < cfg.p:
        image = image * np.float32(rng.uniform(*cfg.contrast))
    if cfg.channel_swap and rng.random() < cfg.p:
        image = image[:, :, rng.permutation(3)]
    return np.clip(image, 0.0, 255.0)


def expand(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_ratio: float) -> Tuple[np.ndarray, np.ndarray]:
    """Zoom out: place the image at a random spot of a canvas up to ``max_ratio`` times
    larger per side, filled with the per-channel median."""
    height, width = labels.shape
    ratio = rng.uniform(1.0, max_ratio)
    out_h, out_w = int(height * ratio), int(width * ratio)
    top, left = int(rng.integers(0, out_h - height + 1)), int(rng.integers(0, out_w - width + 1))
    return place_on_canvas(image, labels, (out_h, out_w), top, left)


def place_on_canvas(image: np.ndarray, labels: np.ndarray, size: Tuple[int, int], top: int,
                    left: int) -> Tuple[np.ndarray, np.ndarray]:
    """``image`` (``HxWxC``) and its label map at ``(top, left)`` of a ``size`` ``(H, W)``
    canvas filled with the image's per-channel median (labels: background)."""
    height, width = labels.shape
    canvas = np.empty((size[0], size[1], image.shape[2]), image.dtype)
    canvas[:] = np.median(image.reshape(-1, image.shape[2]), axis=0)
    canvas[top:top + height, left:left + width] = image
    label_canvas = np.zeros(size, labels.dtype)
    label_canvas[top:top + height, left:left + width] = labels
    return canvas, label_canvas


def random_crop(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, min_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """Crop each side to ``U(min_fraction, 1)`` of its length at a random position;
    instances whose extent centre leaves the crop are removed from the label map."""
    height, width = labels.shape
    crop_h = max(1, int(round(height * rng.uniform(min_fraction, 1.0))))
    crop_w = max(1, int(round(width * rng.uniform(min_fraction, 1.0))))
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    return crop_keeping_centres(image, labels, top, left, crop_h, crop_w)


def crop_keeping_centres(image: np.ndarray, labels: np.ndarray, top: int, left: int, crop_h: int,
                         crop_w: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``crop_h x crop_w`` window at ``(top, left)`` of an image and its label map;
    instances whose extent centre lies outside the window are removed from the labels."""
    ids, bounds = label_extents(labels)
    centre_y = (bounds[:, 0] + bounds[:, 2]) / 2.0
    centre_x = (bounds[:, 1] + bounds[:, 3]) / 2.0
    inside = (centre_y >= top) & (centre_y < top + crop_h) & (centre_x >= left) & (centre_x < left + crop_w)
    labels = labels[top:top + crop_h, left:left + crop_w]
    if not inside.all():
        keep = np.zeros(int(ids.max(initial=0)) + 1, bool)
        keep[ids[inside]] = True
        labels = np.where(keep[labels], labels, 0)
    return image[top:top + crop_h, left:left + crop_w], labels


def flip_and_rotate(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Random horizontal/vertical flips (and quarter turns when ``cfg.rot90``)."""
    if cfg.flips and rng.random() < cfg.p:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if cfg.flips and rng.random() < cfg.p:
        image, labels = image[::-1], labels[::-1]
    if cfg.rot90:
        turns = int(rng.integers(0, 4))
        image, labels = np.rot90(image, turns), np.rot90(labels, turns)
    return image, labels


def resize_pair(image: np.ndarray, labels: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` ``(H, W)``: image bilinear (``INTER_LINEAR``, as the network
    input of spec §1), labels centre-aligned nearest neighbour."""
    height, width = size
    image = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(np.ascontiguousarray(labels, dtype=np.int32), (width, height),
                        interpolation=cv2.INTER_NEAREST_EXACT)
    return image, labels


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """Spec §7 augmentation.

    Args:
        image: uint8 ``HxWx3`` BGR. labels: integer ``HxW`` label map.
        rng: the randomness source (seed it for reproducible samples).
    Returns:
        float32 ``output_size x 3`` image in ``[0, 255]`` (BGR order, possibly permuted)
        and the int32 label map at ``output_size``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != labels.shape:
        raise ValueError(f"augment needs an HxWx3 image and an HxW label map of the same size; got image "
                         f"{image.shape} and labels {labels.shape}")
    data = photometric(image.astype(np.float32), rng, cfg)
    if cfg.max_expand > 1.0 and rng.random() < cfg.p:
        data, labels = expand(data, labels, rng, cfg.max_expand)
    if cfg.min_crop < 1.0 and rng.random() < cfg.p:
        data, labels = random_crop(data, labels, rng, cfg.min_crop)
    data, labels = flip_and_rotate(data, labels, rng, cfg)
    return resize_pair(data, labels, cfg.output_size)


def stain_jitter(image: np.ndarray, rng: np.random.Generator, gain: float = 0.2, shift: float = 12.0) -> np.ndarray:
    """Stain variation of a colour (e.g. H&E) image: each BGR channel scaled by its own
    factor in ``[1 - gain, 1 + gain]`` and shifted by its own offset in ``[-shift, shift]``
    (8-bit units), as stains and scanners differ from slide to slide. uint8 ``HxWx3`` in and out."""
    gains = rng.uniform(1.0 - gain, 1.0 + gain, 3).astype(np.float32)
    offsets = rng.uniform(-shift, shift, 3).astype(np.float32)
    return np.clip(np.rint(image.astype(np.float32) * gains + offsets), 0, 255).astype(np.uint8)


def as_gray(image: np.ndarray) -> np.ndarray:
    """The gray look of a BGR image (all three channels equal), uint8 ``HxWx3``."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def as_brightfield(image: np.ndarray) -> np.ndarray:
    """A fluorescence image given the bright-field look: gray and inverted, so that its
    nuclei are dark on a light background. uint8 ``HxWx3``."""
    return 255 - as_gray(image)
