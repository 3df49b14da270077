"""Reading microscopy images from disk as numpy arrays in OpenCV channel order (BGR)."""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np
import tifffile

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v")
INPUT_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES
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


def load_image(image: Union[PathLike, np.ndarray]) -> np.ndarray:
    """``image`` itself if it is an array, else :func:`read_image` of the path."""
    return read_image(image) if isinstance(image, (str, os.PathLike)) else image


def _read_tiff(path: Path) -> np.ndarray:
    frames = list(_tiff_frames(path, limit=2))
    if len(frames) > 1:
        raise ValueError(f"TIFF {str(path)!r} is a stack of several 2-D frames; segment it with "
                         "ancis_fast.io.iter_frames(path) (the CLI does this) or pass one frame as an array")
    return frames[0][1]


def _tiff_frames(path: Path, limit: Optional[int] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """``(suffix, frame)`` for each 2-D image of the first series, one page at a time."""
    def damaged(exc: Exception, what: str) -> ValueError:
        return ValueError(f"cannot read {what} of TIFF {str(path)!r} ({type(exc).__name__}: {exc}); "
                          "is the file complete?")

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise damaged(exc, "the header") from exc
    with tif:
        try:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            plane_axes = 3 if axes.endswith(("YXS", "YXC")) and shape[-1] in (3, 4) else 2
            leading = [(a, n) for a, n in zip(axes[:-plane_axes], shape[:-plane_axes]) if n > 1]
            pages = series.pages if leading else [series.pages[0]]
            expected = int(np.prod([n for _, n in leading]))
            if len(pages) < expected or any(page is None for page in pages):
                raise ValueError(f"the header describes {expected} frames but only "
                                 f"{sum(page is not None for page in pages)} are present")
        except Exception as exc:
            raise damaged(exc, "the page index") from exc
        for index in range(len(pages)):
            if limit is not None and index >= limit:
                return
            try:
                raw, photometric = pages[index].asarray(), pages[index].photometric
            except Exception as exc:
                raise damaged(exc, f"frame {index}") from exc
            yield _frame_suffix(index, leading), _orient(raw, photometric, path)


def _frame_suffix(index: int, leading: List[Tuple[str, int]]) -> str:
    if not leading:
        return ""
    positions = np.unravel_index(index, [n for _, n in leading])
    return "".join(f"_{axis.lower()}{int(p):03d}" for (axis, _), p in zip(leading, positions))


def _orient(image: np.ndarray, photometric, path: Path) -> np.ndarray:
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[2] not in (3, 4):  # planar CxHxW
        image = np.moveaxis(image, 0, 2)
    if image.ndim == 3 and image.shape[2] in (3, 4) and photometric == tifffile.PHOTOMETRIC.RGB:
        image = image[:, :, [2, 1, 0, 3][: image.shape[2]]]  # TIFF stores RGB(A); the network wants BGR(A)
    if image.ndim not in (2, 3):
        raise ValueError(f"TIFF {str(path)!r} has a page of shape {image.shape}; expected a 2-D gray or colour image")
    return np.ascontiguousarray(image)


def _video_frames(path: Path) -> Iterator[Tuple[str, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot open video {str(path)!r}: unsupported codec or corrupt file")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield f"_f{index:06d}", frame
            index += 1
        if index == 0:
            raise ValueError(f"video {str(path)!r} has no readable frames")
    finally:
        capture.release()


def iter_frames(path: PathLike) -> Iterator[Tuple[str, np.ndarray]]:
    """Every 2-D image in a file as ``(suffix, frame)``: ``("", image)`` for a plain image,
    ``("_t000_z001", page)`` for the pages of a TIFF stack or OME/ImageJ hyperstack (one
    page in memory at a time; axes of size 1 are left out), ``("_f000123", frame)`` for
    video frames (BGR). Raises like :func:`read_image`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        yield from _tiff_frames(path)
    elif suffix in VIDEO_SUFFIXES:
        yield from _video_frames(path)
    else:
        yield "", read_image(path)


def find_images(inputs: Iterable[PathLike], recursive: bool = False,
                missing: Optional[List[str]] = None) -> List[Path]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated list of paths.

    A folder contributes its files with an image or video suffix (``recursive`` descends into
    sub-folders); a path given explicitly is kept whatever its suffix, so that a bad file
    is reported rather than silently skipped.

    Raises:
        FileNotFoundError: an input does not exist (a pattern matches no file), unless
            ``missing`` is given: then its message is appended to ``missing`` instead.
    """
    found: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if os.path.isfile(p))
            if not matches:
                _not_found(f"no file matches {str(item)!r}", missing)
            found += matches
        else:
            _not_found(f"input not found: {str(path)!r}", missing)
    unique = dict.fromkeys(found)
    return list(unique)


def _not_found(message: str, missing: Optional[List[str]]) -> None:
    if missing is None:
        raise FileNotFoundError(message)
    missing.append(message)
