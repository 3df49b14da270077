"""Instance masks stored as tight patches, so that thousands of cells on a large image
cost memory in proportion to the cells, not to ``N x H x W``."""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import cv2
import numpy as np

Index = Union[int, slice, Sequence[int], np.ndarray]


class PatchMasks:
    """``N`` boolean masks of an ``H x W`` image.

    Mask ``i`` is ``patches[i]`` (bool ``[h_i, w_i]``) placed with its top-left corner at
    ``origins[i] = (y, x)``; an empty mask has a ``0 x 0`` patch.
    """

    def __init__(self, patches: List[np.ndarray], origins: np.ndarray, image_size: Tuple[int, int]):
        self.patches = [np.asarray(p, dtype=bool) for p in patches]
        self.origins = np.asarray(origins, dtype=np.int64).reshape(len(self.patches), 2)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        for (y, x), patch in zip(self.origins, self.patches):
            if y < 0 or x < 0 or y + patch.shape[0] > self.image_size[0] or x + patch.shape[1] > self.image_size[1]:
                raise ValueError(f"mask patch {patch.shape} at {(int(y), int(x))} leaves the {self.image_size} image")

    def __getstate__(self) -> dict:
        # one buffer for all patches: pickling thousands of small arrays one by one is slow
        shapes, pixels = pack_patches(self.patches)
        return {"shapes": shapes, "pixels": pixels, "origins": self.origins, "image_size": self.image_size}

    def __setstate__(self, state: dict) -> None:
        self.patches = unpack_patches(state["shapes"], state["pixels"])
        self.origins, self.image_size = state["origins"], state["image_size"]

    @classmethod
    def empty(cls, image_size: Tuple[int, int]) -> "PatchMasks":
        return cls([], np.zeros((0, 2), np.int64), image_size)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> "PatchMasks":
        """``[N,H,W]`` bool -> patches cropped to each mask's bounding box."""
        masks = np.asarray(masks, dtype=bool)
        patches, origins = [], []
        for mask in masks:
            patch, origin = tight_patch(mask)
            patches.append(patch)
            origins.append(origin)
        return cls(patches, np.array(origins, np.int64).reshape(-1, 2), masks.shape[1:])

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: Index) -> "PatchMasks":
        chosen = positions(index, len(self))
        return PatchMasks([self.patches[i] for i in chosen], self.origins[chosen], self.image_size)

    @classmethod
    def cat(cls, parts: Sequence["PatchMasks"]) -> "PatchMasks":
        """The masks of ``parts`` (all of one image size) one after another."""
        image_size = common_image_size(parts, "PatchMasks")
        return cls([p for part in parts for p in part.patches],
                   np.concatenate([part.origins for part in parts]), image_size)

    def mask(self, i: int) -> np.ndarray:
        """Dense bool ``[H,W]`` mask ``i``."""
        out = np.zeros(self.image_size, bool)
        (y, x), patch = self.origins[i], self.patches[i]
        out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        return out

    def dense(self) -> np.ndarray:
        """Dense bool ``[N,H,W]`` (memory: ``N*H*W`` bytes)."""
        out = np.zeros((len(self), *self.image_size), bool)
        for i, ((y, x), patch) in enumerate(zip(self.origins, self.patches)):
            out[i, y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        return out

    @property
    def areas(self) -> np.ndarray:
        """int64 ``[N]`` pixel counts."""
        return np.array([int(p.sum()) for p in self.patches], np.int64)

    @property
    def centroids(self) -> np.ndarray:
        """float64 ``[N,2]`` centroids ``(y, x)``; NaN for empty masks."""
        out = np.full((len(self), 2), np.nan)
        for i, ((y, x), patch) in enumerate(zip(self.origins, self.patches)):
            ys, xs = np.nonzero(patch)
            if len(ys):
                out[i] = (y + ys.mean(), x + xs.mean())
        return out

    def resized(self, image_size: Tuple[int, int]) -> "PatchMasks":
        """The masks resampled onto an image of ``image_size`` ``(H, W)`` covering the same
        field of view (bilinear on pixel centres, kept where >= 0.5: a 2x reduction keeps a
        pixel when at least half of its 2x2 block is set). Masks may become empty."""
        fy, fx = image_size[0] / self.image_size[0], image_size[1] / self.image_size[1]
        patches, origins = [], []
        for (y, x), patch in zip(self.origins, self.patches):
            dense, (oy, ox) = _resample_patch(patch, y, x, fy, fx, image_size)
            patch, (ty, tx) = tight_patch(dense)
            patches.append(patch)
            origins.append((oy + ty, ox + tx) if patch.size else (0, 0))
        return PatchMasks(patches, np.array(origins, np.int64).reshape(-1, 2), image_size)

    def paint(self, canvas: np.ndarray, values: Sequence[int]) -> np.ndarray:
        """Write ``values[i]`` into ``canvas`` where mask ``i`` is set, in order (later wins)."""
        for value, (y, x), patch in zip(values, self.origins, self.patches):
            region = canvas[y : y + patch.shape[0], x : x + patch.shape[1]]
            region[patch] = value
        return canvas


def _resample_patch(patch: np.ndarray, y: int, x: int, fy: float, fx: float,
                    image_size: Tuple[int, int]) -> Tuple[np.ndarray, Tuple[int, int]]:
    """``patch`` at ``(y, x)`` scaled by ``(fy, fx)``: a bool region of the target image and its origin."""
    if patch.size == 0:
        return patch, (0, 0)
    top, left = int(np.floor(y * fy)), int(np.floor(x * fx))
    bottom = min(int(np.ceil((y + patch.shape[0]) * fy)), image_size[0])
    right = min(int(np.ceil((x + patch.shape[1]) * fx)), image_size[1])
    # target pixel centre (i + 0.5) / f - 0.5 in source pixels, relative to the patch
    to_source = np.array([[1 / fx, 0, (left + 0.5) / fx - 0.5 - x],
                          [0, 1 / fy, (top + 0.5) / fy - 0.5 - y]], np.float64)
    values = cv2.warpAffine(patch.astype(np.float32), to_source, (right - left, bottom - top),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
    return values >= 0.5, (top, left)


def positions(index: Index, n: int) -> np.ndarray:
    """The positions ``index`` selects among ``n`` items, as an int array (an int selects
    one item and keeps the result a collection)."""
    if isinstance(index, (int, np.integer)):
        index = [int(index)]
    return np.arange(n)[index]


def common_image_size(parts: Sequence, kind: str) -> Tuple[int, int]:
    """The one ``image_size`` of ``parts``; a clear error for none or several."""
    if not len(parts):
        raise ValueError(f"{kind}.cat of an empty list: pass at least one {kind} (use {kind}.empty(image_size) "
                         "for none)")
    sizes = {tuple(part.image_size) for part in parts}
    if len(sizes) > 1:
        raise ValueError(f"{kind}.cat of different image sizes {sorted(sizes)}: all parts must be of one image")
    return sizes.pop()


def patch_intersection(patch_a: np.ndarray, origin_a: Sequence[int], patch_b: np.ndarray,
                       origin_b: Sequence[int]) -> int:
    """Pixels two masks share, each a bool patch placed at its ``(y, x)`` origin."""
    y0, x0 = max(origin_a[0], origin_b[0]), max(origin_a[1], origin_b[1])
    y1 = min(origin_a[0] + patch_a.shape[0], origin_b[0] + patch_b.shape[0])
    x1 = min(origin_a[1] + patch_a.shape[1], origin_b[1] + patch_b.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    return int(np.logical_and(patch_a[y0 - origin_a[0] : y1 - origin_a[0], x0 - origin_a[1] : x1 - origin_a[1]],
                              patch_b[y0 - origin_b[0] : y1 - origin_b[0], x0 - origin_b[1] : x1 - origin_b[1]]).sum())


def tight_patch(mask: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Crop a dense ``[H,W]`` mask to its bounding box: ``(patch, (y, x))``."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), bool), (0, 0)
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy(), (int(rows[0]), int(cols[0]))


def pack_patches(patches: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """``(shapes [N,2], pixels)``: bool patches as their shapes and one flat buffer."""
    shapes = np.array([p.shape for p in patches], np.int64).reshape(-1, 2)
    pixels = np.concatenate([p.ravel() for p in patches]) if len(patches) else np.zeros(0, bool)
    return shapes, pixels


def unpack_patches(shapes: np.ndarray, pixels: np.ndarray) -> List[np.ndarray]:
    """Inverse of :func:`pack_patches` (the patches are views of ``pixels``)."""
    ends = np.cumsum(shapes[:, 0] * shapes[:, 1])
    return [part.reshape(shape) for part, shape in zip(np.split(pixels, ends[:-1]), shapes.tolist())]
