"""Finding the tissue of a huge image on a low-resolution view, so that windows holding
only background are not segmented.

The view is the image shrunk by an integer ``factor`` (area averages, so single noisy
pixels do not count as tissue), built chunk by chunk on the workers
(:func:`thumbnail_piece`); Otsu's threshold on it separates tissue from background
(:func:`tissue_mask`): for ``background="dark"`` (fluorescence) tissue is what is brighter,
for ``"bright"`` (bright-field) what is darker. A window is segmented when the mask,
grown by one view pixel, reaches it (:func:`windows_with_tissue`).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import cv2
import numpy as np

BACKGROUNDS = ("dark", "bright")
VIEW_SIDE = 2048  # px: the longer side of the low-resolution view, at most


def view_factor(size: Tuple[int, int]) -> int:
    """The integer shrink factor that brings the longer side to at most :data:`VIEW_SIDE`."""
    return max(1, -(-max(size) // VIEW_SIDE))


def thumbnail_piece(pixels8: np.ndarray, factor: int) -> np.ndarray:
    """An 8-bit chunk (gray, or BGR(A)) shrunk by ``factor`` (area averages), gray."""
    gray = cv2.cvtColor(pixels8[:, :, :3], cv2.COLOR_BGR2GRAY) if pixels8.ndim == 3 else pixels8
    size = (-(-gray.shape[1] // factor), -(-gray.shape[0] // factor))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA) if factor > 1 else gray


def assemble(pieces: Sequence[np.ndarray], chunks: Sequence[Tuple[int, int, int, int]], size: Tuple[int, int],
             factor: int) -> np.ndarray:
    """The view of the whole image from the pieces of its chunks ``(y0, y1, x0, x1)``."""
    view = np.zeros((-(-size[0] // factor), -(-size[1] // factor)), np.uint8)
    for piece, (y0, _, x0, _) in zip(pieces, chunks):
        region = view[y0 // factor : y0 // factor + piece.shape[0], x0 // factor : x0 // factor + piece.shape[1]]
        region[...] = piece[: region.shape[0], : region.shape[1]]
    return view


def tissue_mask(view: np.ndarray, background: str) -> np.ndarray:
    """Bool mask of the view's tissue by Otsu's threshold (see the module docstring)."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background={background!r}; expected one of {BACKGROUNDS} (dark: fluorescence, "
                         "bright: bright-field)")
    threshold, _ = cv2.threshold(view, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return view > threshold if background == "dark" else view <= threshold  # Otsu splits at "> threshold"


def windows_with_tissue(mask: np.ndarray, factor: int, windows: Sequence[Tuple[int, int, int, int]]) -> List[bool]:
    """For each window ``(y0, y1, x0, x1)`` (image pixels): whether the mask, grown by one
    view pixel, reaches it."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return [bool(grown[y0 // factor : -(-y1 // factor), x0 // factor : -(-x1 // factor)].any())
            for y0, y1, x0, x1 in windows]
