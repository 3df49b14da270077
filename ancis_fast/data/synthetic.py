"""Synthetic fluorescence-nuclei images with exact instance labels.

Each image draws its own *style* (nucleus size and shape, density, arrangement, texture,
focus, background, debris, noise, bit depth, stain) from wide ranges, so that a model
trained on the stream sees far more variety than one microscope gives. Everything is
vectorised numpy/OpenCV except a short loop over cells, each rasterised on its own small
patch.

Determinism: ``generate(seed)`` depends only on ``seed`` (an int or a tuple of ints, e.g.
``(base_seed, index)``) and the config, never on global random state or worker count.

Outputs (:class:`~ancis_fast.data.sample.Sample`):

- fluorescence, gray: ``HxW`` uint8, or uint16 (12- or 16-bit camera range with offset);
- fluorescence, coloured: ``HxWx3`` uint8 BGR, nuclear stain tinted (DAPI blue, green, red,
  magenta ...), sometimes with a second, cytoplasmic stain;
- bright-field: ``HxWx3`` uint8, dark nuclei on a light background, H&E-like colours or gray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np

from .sample import Sample, relabel_sequential

Seed = Union[int, Sequence[int]]

#: BGR tints of nuclear stains (DAPI/Hoechst shown blue, GFP green, RFP/PI red, ...)
STAIN_TINTS = np.array([
    [1.0, 0.15, 0.05], [0.1, 1.0, 0.1], [0.05, 0.1, 1.0], [1.0, 0.2, 0.9], [1.0, 0.85, 0.1],
    [0.55, 0.55, 1.0], [1.0, 1.0, 1.0], [0.7, 0.25, 0.35],
], np.float32)


@dataclass(frozen=True)
class SynthConfig:
    """Ranges the per-image styles are drawn from.

    Attributes:
        size: ``(H, W)`` of every image (an int means square).
        diameter: range of an image's typical nucleus diameter in pixels (log-uniform);
            single nuclei vary around it.
        count: range of nuclei per image (log-uniform); dense requests are capped by the
            space available, so large nuclei come in smaller numbers.
        p_16bit: share of gray fluorescence images written as uint16.
        p_colour: share of coloured fluorescence images.
        p_brightfield: share of bright-field images (dark nuclei on a light background).
        blur: range of the optical (point-spread) blur's sigma in px, drawn per image and
            scaled up for nuclei over 40 px; larger values give softer nucleus edges.
        edge_floor: range of the stain level at a nucleus's labelled edge before blur, as a
            share of its inner level, drawn per image. 0 (default): the stain ramps down to
            nothing at the label's edge; about 0.5 or more puts the edge where a soft edge is
            near half its core level, as manual annotations do.
    """

    size: Tuple[int, int] = (512, 512)
    diameter: Tuple[float, float] = (6.0, 60.0)
    count: Tuple[int, int] = (10, 1500)
    p_16bit: float = 0.2
    p_colour: float = 0.25
    p_brightfield: float = 0.1
    blur: Tuple[float, float] = (0.3, 1.3)
    edge_floor: Tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if isinstance(self.size, (int, np.integer)):
            object.__setattr__(self, "size", (int(self.size), int(self.size)))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.size) != 2 or min(self.size) < 16:
            raise ValueError(f"size={self.size}; expected (H, W) with both sides >= 16")
        if not 2.0 <= self.diameter[0] <= self.diameter[1]:
            raise ValueError(f"diameter={self.diameter}; expected 2 <= min <= max (pixels)")
        if not 1 <= self.count[0] <= self.count[1]:
            raise ValueError(f"count={self.count}; expected 1 <= min <= max")
        for name in ("p_16bit", "p_colour", "p_brightfield"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}; expected a probability in [0, 1]")
        if not 0.0 <= self.blur[0] <= self.blur[1]:
            raise ValueError(f"blur={self.blur}; expected 0 <= min <= max (px)")
        if not 0.0 <= self.edge_floor[0] <= self.edge_floor[1] <= 1.0:
            raise ValueError(f"edge_floor={self.edge_floor}; expected 0 <= min <= max <= 1")
        if self.p_colour + self.p_brightfield > 1.0:
            raise ValueError(f"p_colour + p_brightfield = {self.p_colour + self.p_brightfield} > 1")


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


@dataclass
class _Style:
    """Parameters drawn once per image."""

    diameter: float
    size_sigma: float
    count: int
    arrangement: str
    cluster_size: float
    max_overlap: float
    elongation: float
    irregularity: float
    modality: str  # "gray", "colour", "brightfield"
    # SynthConfig's ranges; drawn where they are used, after the geometry
    blur: Tuple[float, float]
    edge_floor: Tuple[float, float]


def _draw_style(rng: np.random.Generator, cfg: SynthConfig) -> _Style:
    height, width = cfg.size
    diameter = _loguniform(rng, *cfg.diameter)
    size_sigma = rng.uniform(0.06, 0.3)
    cell_area = math.pi / 4 * diameter**2 * math.exp(2 * size_sigma**2)
    capacity = 0.6 * height * width / cell_area
    wanted = _loguniform(rng, cfg.count[0], cfg.count[1] + 1)
    count = int(max(1, min(wanted, capacity, cfg.count[1])))
    arrangement = str(rng.choice(["uniform", "clustered", "packed"], p=[0.45, 0.35, 0.2]))
    overlap = {"uniform": (0.0, 0.12), "clustered": (0.05, 0.3), "packed": (0.1, 0.35)}[arrangement]
    u = rng.random()
    modality = "colour" if u < cfg.p_colour else "brightfield" if u < cfg.p_colour + cfg.p_brightfield else "gray"
    return _Style(
        diameter=diameter, size_sigma=size_sigma, count=count, arrangement=arrangement,
        cluster_size=rng.uniform(3, 30), max_overlap=rng.uniform(*overlap),
        elongation=rng.uniform(0.03, 0.45) if rng.random() < 0.8 else rng.uniform(0.45, 0.9),
        irregularity=rng.uniform(0.0, 0.12), modality=modality, blur=cfg.blur, edge_floor=cfg.edge_floor,
    )


# ---------------------------------------------------------------------------- geometry

def _candidate_centres(rng: np.random.Generator, style: _Style, height: int, width: int, n: int) -> np.ndarray:
    """``[n,2]`` float (y, x) centres; up to one radius outside the image so that some
    nuclei are cut by the border."""
    margin = style.diameter / 2
    low, high = np.array([-margin, -margin]), np.array([height + margin, width + margin])
    if style.arrangement != "clustered":
        return rng.uniform(low, high, (n, 2))
    parents = rng.uniform(low, high, (max(1, int(n / style.cluster_size)), 2))
    spread = style.diameter * rng.uniform(0.5, 1.2) * math.sqrt(style.cluster_size) / 2
    centres = parents[rng.integers(0, len(parents), n)] + rng.normal(0, spread, (n, 2))
    return np.clip(centres, low, high)


_VERTICES = 32  # outline polygon vertices: a chord error below 0.2 px up to 60 px nuclei
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly


def _outlines(rng: np.random.Generator, style: _Style, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Outline polygons of nuclei: ellipses whose radius is modulated by smooth random
    harmonics (orders 2-5), all drawn at once.

    Returns:
        float64 ``[N,K,2]`` vertices ``(x, y)`` in image pixels (OpenCV point order).
    """
    n = len(radii)
    stretch = 1.0 + np.abs(rng.normal(0.0, style.elongation, n))
    semi_a, semi_b = radii * np.sqrt(stretch), radii / np.sqrt(stretch)
    orders = np.arange(2, 6)
    amplitudes = rng.normal(0.0, style.irregularity, (n, 4)) * 2 / orders
    phases = rng.uniform(0, 2 * math.pi, (n, 4))
    angles = np.linspace(0, 2 * math.pi, _VERTICES, endpoint=False)
    modulation = 1.0 + np.einsum("nk,nkv->nv", amplitudes, np.cos(orders[None, :, None] * angles + phases[..., None]))
    u = semi_a[:, None] * np.cos(angles) * modulation
    v = semi_b[:, None] * np.sin(angles) * modulation
    theta = rng.uniform(0, math.pi, n)[:, None]
    dx = u * np.cos(theta) - v * np.sin(theta)
    dy = u * np.sin(theta) + v * np.cos(theta)
    return np.stack([centres[:, 1, None] + dx, centres[:, 0, None] + dy], axis=-1)


def _place_cells(rng: np.random.Generator, style: _Style, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rasterise nuclei into a label map; a new nucleus is rejected when more than
    ``max_overlap`` of it is already taken, otherwise it goes *behind* its neighbours
    (so touching nuclei get a shared contact line).

    Returns:
        ``labels`` int32 ``HxW`` (ids 1..N, tiny visible fragments removed) and
        ``radii`` float32 ``[N+1]`` (index 0 unused).
    """
    tries = style.count * (4 if style.arrangement == "packed" else 2)
    centres = _candidate_centres(rng, style, height, width, tries)
    radii = np.clip(style.diameter / 2 * np.exp(rng.normal(0.0, style.size_sigma, tries)), 2.0, None)
    outlines = _outlines(rng, style, centres, radii)
    top_left = np.floor(outlines.min(axis=1)).astype(np.int64)  # [N,2] (x, y)
    bottom_right = np.ceil(outlines.max(axis=1)).astype(np.int64) + 1
    points = np.rint((outlines - top_left[:, None, :]) * (1 << _SHIFT)).astype(np.int32)
    labels = np.zeros((height, width), np.int32)
    kept_radii: List[float] = [0.0]
    full_areas: List[int] = [0]
    for i, ((cy, cx), (x0, y0), (x1, y1)) in enumerate(zip(np.floor(centres).astype(np.int64).tolist(), top_left.tolist(),
                                                           bottom_right.tolist())):
        if len(kept_radii) > style.count:
            break
        if 0 <= cy < height and 0 <= cx < width and labels[cy, cx]:
            continue  # cheap early rejection: the centre is already taken
        sy, sx = max(0, -y0), max(0, -x0)
        ey, ex = min(y1, height) - y0, min(x1, width) - x0
        if ey <= sy or ex <= sx:
            continue
        patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(patch, [points[i]], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        inside = patch[sy:ey, sx:ex].view(bool)
        region = labels[y0 + sy:y0 + ey, x0 + sx:x0 + ex]
        area = int(np.count_nonzero(patch))
        if area == 0 or np.count_nonzero(inside & (region > 0)) > style.max_overlap * area:
            continue
        region[inside & (region == 0)] = len(kept_radii)
        kept_radii.append(float(radii[i]))
        full_areas.append(area)
    return _drop_fragments(labels, np.array(kept_radii, np.float32), np.array(full_areas))


def _drop_fragments(labels: np.ndarray, radii: np.ndarray, full_areas: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Remove nuclei of which almost nothing is visible (border cuts, occlusion): fewer
    than ``max(5, 10 %)`` of their pixels."""
    visible = np.bincount(labels.ravel(), minlength=len(radii))
    keep = visible >= np.maximum(5, 0.1 * full_areas)
    keep[0] = True
    labels = np.where(keep[labels], labels, 0)
    return relabel_sequential(labels), radii[keep]


# ---------------------------------------------------------------------------- rendering

def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on a downsampled copy (the result is smooth anyway)."""
    if sigma <= 4.0:
        return cv2.GaussianBlur(image, (0, 0), max(sigma, 0.3))
    factor = sigma / 2.0
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, round(width / factor)), max(1, round(height / factor))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (width, height), interpolation=cv2.INTER_LINEAR)


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: Tuple[int, int], amplitude: float) -> np.ndarray:
    """Smooth random field ``1 +- amplitude`` (float32 ``HxW``): bicubic from a coarse
    grid to 1/8 size, then bilinear to full size."""
    grid = rng.uniform(1 - amplitude, 1 + amplitude, (cells[0] + 3, cells[1] + 3)).astype(np.float32)
    sh, sw = max(8, height // 8), max(8, width // 8)
    oy, ox = sh // cells[0], sw // cells[1]
    big = cv2.resize(grid, (sw + 2 * ox, sh + 2 * oy), interpolation=cv2.INTER_CUBIC)[oy:oy + sh, ox:ox + sw]
    return np.clip(cv2.resize(big, (width, height), interpolation=cv2.INTER_LINEAR), 0.05, None)


def _noise_texture(rng: np.random.Generator, shape: Tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std band-limited noise with features of about ``scale`` pixels;
    coarse textures are drawn on a smaller grid and upsampled."""
    height, width = shape
    factor = max(1.0, scale / 1.5)
    small = (max(2, math.ceil(height / factor)), max(2, math.ceil(width / factor)))
    field = cv2.GaussianBlur(rng.standard_normal(small, dtype=np.float32), (0, 0), max(scale / factor, 0.5))
    if factor > 1.0:
        field = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    return field / (field.std() + 1e-6)


def _own_boundary_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) from each foreground pixel to the edge of its own nucleus: edges
    between two touching nuclei count as edges."""
    inner = labels > 0
    inner[:-1] &= labels[:-1] == labels[1:]
    inner[1:] &= labels[1:] == labels[:-1]
    inner[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    inner[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    return cv2.distanceTransform(inner.astype(np.uint8), cv2.DIST_L2, 3) + (labels > 0)


def _nuclear_signal(rng: np.random.Generator, labels: np.ndarray, radii: np.ndarray, style: _Style) -> np.ndarray:
    """Stain density of the nuclei (float32 ``HxW``, ~1 inside a typical nucleus, 0 outside):
    per-nucleus brightness (some dim, a few bright), a soft edge profile, chromatin texture
    and nucleoli."""
    n = len(radii) - 1
    brightness = np.exp(rng.normal(0.0, rng.uniform(0.08, 0.45), n + 1)).astype(np.float32)
    dim = rng.random(n + 1) < rng.uniform(0.0, 0.3)
    brightness[dim] *= rng.uniform(0.2, 0.5, int(dim.sum()))
    bright = rng.random(n + 1) < rng.uniform(0.0, 0.05)
    brightness[bright] *= rng.uniform(1.5, 2.5, int(bright.sum()))
    brightness[0] = 0.0

    edge = np.maximum(radii * rng.uniform(0.15, 0.7), 0.8).astype(np.float32)
    edge[0] = 1.0
    profile = np.clip(_own_boundary_distance(labels) / edge[labels], 0.0, 1.0) ** rng.uniform(0.3, 1.0)
    if style.edge_floor[1] > 0:  # drawn only when asked for: the default's images stay what they were
        floor = rng.uniform(*style.edge_floor)
        profile = floor + (1.0 - floor) * profile

    shape = labels.shape
    texture = 1.0 + rng.uniform(0.0, 0.35) * _noise_texture(rng, shape, rng.uniform(0.7, 2.5))
    texture += rng.uniform(0.0, 0.25) * _noise_texture(rng, shape, style.diameter * rng.uniform(0.1, 0.3))
    signal = brightness[labels] * profile * np.clip(texture, 0.1, None)
    return _add_nucleoli(rng, signal, labels, style) if rng.random() < 0.4 else signal


def _add_nucleoli(rng: np.random.Generator, signal: np.ndarray, labels: np.ndarray, style: _Style) -> np.ndarray:
    """Small darker (or brighter) spots inside nuclei."""
    ys, xs = np.nonzero(labels)
    if ys.size == 0:
        return signal
    count = int(labels.max() * rng.uniform(0.5, 3))
    pick = rng.integers(0, ys.size, count)
    factor = np.ones_like(signal)
    radius = max(1, int(round(style.diameter * rng.uniform(0.05, 0.12))))
    level = rng.uniform(0.4, 0.8) if rng.random() < 0.7 else rng.uniform(1.3, 1.8)
    for y, x in zip(ys[pick], xs[pick]):
        cv2.circle(factor, (int(x), int(y)), radius, float(level), -1, lineType=cv2.LINE_AA)
    return signal * cv2.GaussianBlur(factor, (0, 0), 0.8)


def _focus(rng: np.random.Generator, signal: np.ndarray, labels: np.ndarray, style: _Style) -> np.ndarray:
    """Optical blur: a point-spread blur for everything, a much stronger one for the
    out-of-focus share of nuclei (they stay labelled, as in manual annotations)."""
    psf = rng.uniform(*style.blur) * max(1.0, style.diameter / 40)
    if rng.random() < 0.5:
        return _blur(signal, psf)
    away = rng.random(int(labels.max()) + 1) < rng.uniform(0.05, 0.3)
    away[0] = False
    blurred_part = signal * away[labels]
    sharp = _blur(signal - blurred_part, psf)
    return sharp + _blur(blurred_part, psf + style.diameter * rng.uniform(0.04, 0.12))


def _debris(rng: np.random.Generator, shape: Tuple[int, int], style: _Style) -> np.ndarray:
    """Unlabelled clutter: bright specks, thin fibres and faint out-of-focus blobs."""
    height, width = shape
    layer = np.zeros(shape, np.float32)
    scale = height * width / 512**2
    for _ in range(rng.poisson(rng.uniform(0, 40) * scale)):
        cv2.circle(layer, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                   int(rng.integers(0, 3)), float(rng.uniform(0.2, 2.0)), -1, lineType=cv2.LINE_AA)
    for _ in range(rng.poisson(rng.uniform(0, 4) * scale)):
        steps = np.cumsum(rng.normal(0, 6, (int(rng.integers(3, 12)), 2)), axis=0)
        points = (steps + rng.uniform(0, [width, height])).astype(np.int32)
        cv2.polylines(layer, [points], False, float(rng.uniform(0.1, 0.6)), 1, lineType=cv2.LINE_AA)
    for _ in range(rng.poisson(rng.uniform(0, 2) * scale)):
        cv2.circle(layer, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                   int(style.diameter * rng.uniform(1, 3)), float(rng.uniform(0.02, 0.1)), -1)
    return cv2.GaussianBlur(layer, (0, 0), rng.uniform(0.5, 1.5))


def _haze(rng: np.random.Generator, labels: np.ndarray, style: _Style) -> np.ndarray:
    """Diffuse signal around nuclei (cytoplasmic background staining), float32 ``HxW``."""
    spread = style.diameter * rng.uniform(0.3, 1.2)
    field = _blur((labels > 0).astype(np.float32), spread)
    texture = 1.0 + 0.5 * _noise_texture(rng, labels.shape, style.diameter * 0.3)
    return field * np.clip(texture, 0.0, None) / (field.max() + 1e-6)


def _illumination(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Uneven illumination: a smooth random field times a vignette."""
    height, width = shape
    field = _smooth_field(rng, height, width, (int(rng.integers(1, 5)), int(rng.integers(1, 5))), rng.uniform(0, 0.35))
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None] - rng.uniform(-0.5, 0.5)
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :] - rng.uniform(-0.5, 0.5)
    return field * (1.0 - rng.uniform(0.0, 0.35) * (yy * yy + xx * xx) / 2)


# ---------------------------------------------------------------------------- camera

def _photon_noise(rng: np.random.Generator, signal: np.ndarray, photons: float) -> np.ndarray:
    """Signal (relative, ~1 in a typical nucleus) -> noisy photon counts: Poisson shot
    noise (Gaussian-approximated above 30 photons per nucleus, where the difference is
    invisible after quantisation) plus
    Gaussian read noise."""
    expected = np.maximum(signal, 0.0) * photons
    if photons < 30:
        counts = rng.poisson(expected).astype(np.float32)
    else:
        counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    return counts + rng.normal(0.0, rng.uniform(0.0, 3.0), expected.shape).astype(np.float32)


def _to_uint8(rng: np.random.Generator, counts: np.ndarray, photons: float) -> np.ndarray:
    """Exposure to 8 bits: a typical nucleus lands anywhere from dark (~45) to saturated."""
    gain = _loguniform(rng, 45.0, 330.0) / photons
    return np.clip(np.rint(counts * gain), 0, 255).astype(np.uint8)


def _to_uint16(rng: np.random.Generator, counts: np.ndarray, photons: float) -> np.ndarray:
    """Camera with offset and gain; 12-bit or 16-bit range."""
    top = 4095 if rng.random() < 0.5 else 65535
    offset = rng.uniform(0, 0.05) * top
    gain = rng.uniform(0.15, 0.7) * (top - offset) / photons
    return np.clip(np.rint(offset + counts * gain), 0, top).astype(np.uint16)


# ---------------------------------------------------------------------------- modalities

def _fluorescence_signal(rng: np.random.Generator, labels: np.ndarray, radii: np.ndarray, style: _Style) -> np.ndarray:
    shape = labels.shape
    signal = _focus(rng, _nuclear_signal(rng, labels, radii, style), labels, style)
    if rng.random() < 0.4:
        signal += rng.uniform(0.02, 0.15) * _haze(rng, labels, style)
    signal += _debris(rng, shape, style)
    background = _loguniform(rng, 0.004, 0.25) * _smooth_field(rng, *shape, (3, 3), rng.uniform(0, 0.5))
    return (signal + background) * _illumination(rng, shape)


def _render_gray(rng: np.random.Generator, labels: np.ndarray, radii: np.ndarray, style: _Style, p_16bit: float) -> np.ndarray:
    photons = _loguniform(rng, 8.0, 3000.0)
    counts = _photon_noise(rng, _fluorescence_signal(rng, labels, radii, style), photons)
    return _to_uint16(rng, counts, photons) if rng.random() < p_16bit else _to_uint8(rng, counts, photons)


def _render_colour(rng: np.random.Generator, labels: np.ndarray, radii: np.ndarray, style: _Style) -> np.ndarray:
    """Tinted nuclear stain, sometimes with a second (cytoplasmic) stain in another tint."""
    photons = _loguniform(rng, 8.0, 3000.0)
    nuclear = _to_uint8(rng, _photon_noise(rng, _fluorescence_signal(rng, labels, radii, style), photons), photons)
    tints = STAIN_TINTS[rng.permutation(len(STAIN_TINTS))[:2]] * rng.uniform(0.8, 1.0, (2, 1))
    image = nuclear[..., None].astype(np.float32) * tints[0]
    if rng.random() < 0.4:
        second = _haze(rng, labels, style) * rng.uniform(20, 120) + rng.uniform(0, 10)
        second += rng.normal(0, rng.uniform(1, 5), labels.shape)
        image += np.clip(second, 0, None)[..., None] * tints[1]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render_brightfield(rng: np.random.Generator, labels: np.ndarray, radii: np.ndarray, style: _Style) -> np.ndarray:
    """Absorbing stains (Beer-Lambert): hematoxylin-dark nuclei, optional eosin-pink
    surroundings, on a bright background; H&E-like colour or gray."""
    shape = labels.shape
    nuclei = _focus(rng, _nuclear_signal(rng, labels, radii, style), labels, style)
    nuclei = nuclei * rng.uniform(0.6, 2.0) + _debris(rng, shape, style)
    surround = _haze(rng, labels, style) * rng.uniform(0.05, 0.6) + rng.uniform(0, 0.15)
    if rng.random() < 0.7:
        hematoxylin = np.array([0.25, 0.8, 0.6], np.float32) * rng.uniform(0.8, 1.2, 3)
        eosin = np.array([0.1, 0.85, 0.15], np.float32) * rng.uniform(0.7, 1.3, 3)
    else:
        hematoxylin = eosin = np.ones(3, np.float32) * rng.uniform(0.6, 1.0)
    density = nuclei[..., None] * hematoxylin + surround[..., None] * eosin * 0.5
    light = rng.uniform(190, 250) * _illumination(rng, shape)[..., None] * rng.uniform(0.9, 1.0, 3)
    image = light * np.exp(-density.astype(np.float32))
    image += rng.normal(0, rng.uniform(1, 6), image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- public API

def _rng(seed: Seed) -> np.random.Generator:
    entropy = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if any(s < 0 for s in entropy):
        raise ValueError(f"seed must be non-negative integer(s), got {seed}")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def generate(seed: Seed, config: SynthConfig = SynthConfig(), name: str = "") -> Sample:
    """One synthetic image with its instance labels.

    Args:
        seed: int or tuple of ints; the sample depends only on it and ``config``.
        config: ranges of the styles; see :class:`SynthConfig`.
    Returns:
        a :class:`Sample`: ``image`` ``HxW`` uint8/uint16 (gray) or ``HxWx3`` uint8 (BGR),
        ``labels`` int32 ``HxW`` with ids ``1..N``.
    """
    rng = _rng(seed)
    height, width = config.size
    style = _draw_style(rng, config)
    labels, radii = _place_cells(rng, style, height, width)
    if style.modality == "colour":
        image = _render_colour(rng, labels, radii, style)
    elif style.modality == "brightfield":
        image = _render_brightfield(rng, labels, radii, style)
        if rng.random() < 0.3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    else:
        image = _render_gray(rng, labels, radii, style, config.p_16bit)
    return Sample(image, labels, name or _default_name(seed))


def _default_name(seed: Seed) -> str:
    parts = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    return "synth_" + "_".join(f"{int(p):06d}" if i == len(parts) - 1 else str(int(p)) for i, p in enumerate(parts))
