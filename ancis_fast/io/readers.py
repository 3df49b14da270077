"""Reading microscopy images from disk as numpy arrays in OpenCV channel order (BGR)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Union

import cv2
import numpy as np
import tifffile

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
PathLike = Union[str, os.PathLike]


def read_image(path: PathLike) -> np.ndarray:
    """Read one 2-D image (gray ``HxW`` or colour ``HxWx3/4`` in BGR(A) order), keeping its
    bit depth.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is unreadable, truncated, or not a single 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {str(path)!r}")
    if path.suffix.lower() in (".tif", ".tiff"):
        image = _read_tiff(path)
    else:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"cannot decode image {str(path)!r}: unsupported format or corrupt/truncated file")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.size == 0:
        raise ValueError(f"image {str(path)!r} is empty (shape {image.shape})")
    return image


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            image = tif.pages[0].asarray()
            photometric = tif.pages[0].photometric
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ValueError(f"cannot read TIFF {str(path)!r} ({type(exc).__name__}: {exc}); is the file complete?") from exc
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[2] not in (3, 4):  # planar CxHxW
        image = np.moveaxis(image, 0, 2)
    if image.ndim == 3 and image.shape[2] in (3, 4) and photometric == tifffile.PHOTOMETRIC.RGB:
        image = image[:, :, [2, 1, 0, 3][: image.shape[2]]]  # TIFF stores RGB(A); the network wants BGR(A)
    if image.ndim not in (2, 3):
        raise ValueError(f"TIFF {str(path)!r} page 0 has shape {image.shape}; expected a 2-D gray or colour image")
    return np.ascontiguousarray(image)


def find_images(inputs: Iterable[PathLike], recursive: bool = False) -> List[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image paths.

    A folder contributes its files with an image suffix (``recursive`` descends into
    sub-folders); a path given explicitly is kept whatever its suffix, so that a bad file
    is reported rather than silently skipped.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"input not found: {str(path)!r}")
    unique = dict.fromkeys(found)
    return list(unique)
