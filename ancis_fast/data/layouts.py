"""Annotated datasets on disk, read as :class:`~ancis_fast.data.sample.Sample` sequences.

Two layouts:

``dsb``: the 2018 Data Science Bowl layout (spec §9)::

    <root>/<id>/images/<id>.png        the image (any bit depth, gray/BGR/BGRA)
    <root>/<id>/masks/<anything>.png   one binary mask per nucleus (non-zero = inside)

``labels``: the label-image layout StarDist and Cellpose users keep::

    <root>/images/<name>.tif|png|...   the image
    <root>/masks/<name>[_masks|_mask|_labels|_label|_seg].tif|png   integer label image

Readers are lazy (a file is read when its item is asked for). Writers are atomic: a DSB
sample appears under its final name only when complete, and label-layout files are
written through a temporary file and renamed.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np

from ..io.readers import IMAGE_SUFFIXES, read_image
from ..io.writers import write_image, write_label_image
from .sample import Sample, label_extents, relabel_sequential

PathLike = Union[str, os.PathLike]
LAYOUTS = ("auto", "dsb", "labels")
MASK_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_seg")


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


class DSBDataset(Sequence[Sample]):
    """Samples of a DSB-layout folder, sorted by id. Masks are merged into a label map in
    file-name order (numeric names in numeric order; the ``k``-th mask -> id ``k``);
    where masks overlap the later one wins."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {str(self.root)!r}")
        self.ids = sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir() and not p.name.startswith("."))
        if not self.ids:
            raise ValueError(f"{str(self.root)!r} holds no DSB samples (<root>/<id>/images/<id>.png)")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        sample_id = self.ids[index]
        return Sample(self.image(index), self.read_labels(sample_id), sample_id)

    def image(self, index: int) -> np.ndarray:
        """The image of sample ``index`` alone (no masks read)."""
        return read_image(self.image_path(self.ids[index]))

    def image_path(self, sample_id: str) -> Path:
        folder = self.root / sample_id / "images"
        preferred = folder / f"{sample_id}.png"
        if preferred.is_file():
            return preferred
        found = _image_files(folder)
        if not found:
            raise FileNotFoundError(f"DSB sample {sample_id!r} has no image in {str(folder)!r}")
        return found[0]

    def read_labels(self, sample_id: str) -> np.ndarray:
        """int32 ``HxW`` label map of the sample's masks (all-zero when it has none)."""
        folder = self.root / sample_id / "masks"
        files = sorted(_image_files(folder), key=_natural_key) if folder.is_dir() else []
        labels = None
        for k, path in enumerate(files, start=1):
            mask = read_image(path)
            mask = mask.any(axis=2) if mask.ndim == 3 else mask > 0
            if labels is None:
                labels = np.zeros(mask.shape, np.int32)
            elif mask.shape != labels.shape:
                raise ValueError(f"mask {str(path)!r} is {mask.shape}, other masks of {sample_id!r} are {labels.shape}")
            labels[mask] = k
        if labels is None:
            height, width = read_image(self.image_path(sample_id)).shape[:2]
            return np.zeros((height, width), np.int32)
        return relabel_sequential(labels)


def _mask_stem(stem: str) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


class LabelImageDataset(Sequence[Sample]):
    """Samples of an ``images/`` + ``masks/`` folder pair, matched by file stem."""

    def __init__(self, root: PathLike):
        self.root = Path(root)
        images_dir, masks_dir = self.root / "images", self.root / "masks"
        if not images_dir.is_dir() or not masks_dir.is_dir():
            raise FileNotFoundError(f"{str(self.root)!r} needs images/ and masks/ sub-folders for the label layout")
        masks: Dict[str, Path] = {}
        for path in _image_files(masks_dir):
            masks.setdefault(path.stem, path)
            masks.setdefault(_mask_stem(path.stem), path)
        self.pairs: List[Tuple[Path, Path]] = []
        missing = []
        for image in _image_files(images_dir):
            if image.stem in masks:
                self.pairs.append((image, masks[image.stem]))
            else:
                missing.append(image.name)
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) in {str(images_dir)!r} have no label image in "
                                    f"{str(masks_dir)!r} (same stem, optionally + {'/'.join(MASK_SUFFIXES)}): "
                                    f"{', '.join(missing[:5])}")
        if not self.pairs:
            raise ValueError(f"{str(images_dir)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    @property
    def ids(self) -> List[str]:
        return [image.stem for image, _ in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        image_path, mask_path = self.pairs[index]
        labels = read_image(mask_path)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"label image {str(mask_path)!r} has shape {labels.shape} and dtype {labels.dtype}; "
                             "expected a single-channel integer image (one id per cell, 0 = background)")
        return Sample(read_image(image_path), labels.astype(np.int64).astype(np.int32), image_path.stem)

    def image(self, index: int) -> np.ndarray:
        """The image of sample ``index`` alone (no label image read)."""
        return read_image(self.pairs[index][0])


def detect_layout(root: PathLike) -> str:
    """``"labels"`` when ``root`` has ``images/`` and ``masks/``, ``"dsb"`` when it has
    ``<id>/images/`` folders; ``ValueError`` otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {str(root)!r}")
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "labels"
    if any((p / "images").is_dir() for p in root.iterdir()):
        return "dsb"
    raise ValueError(f"{str(root)!r} is neither a DSB folder (<id>/images/<id>.png + <id>/masks/*.png) nor a "
                     "label-image folder (images/ + masks/)")


def dataset_images(folder: PathLike) -> List[Path]:
    """The images of a dataset folder that holds no images of its own: ``<id>/images/``
    files of a DSB folder (the masks are not needed: Kaggle's test sets have none) or
    ``images/`` files of a label-layout folder. ``[]`` for any other folder."""
    folder = Path(folder)
    if not folder.is_dir() or _image_files(folder):
        return []
    try:
        layout = detect_layout(folder)
    except ValueError:
        return []
    if layout == "labels":
        return _image_files(folder / "images")
    dataset = DSBDataset(folder)
    return [dataset.image_path(sample_id) for sample_id in dataset.ids]


def expand_datasets(inputs: Sequence[str]) -> List[str]:
    """``inputs`` (paths, folders, glob patterns) with each dataset folder replaced by its
    images (:func:`dataset_images`), so that segmenting a dataset never segments its masks."""
    expanded: List[str] = []
    for item in inputs:
        images = dataset_images(item)
        expanded += [str(p) for p in images] if images else [item]
    return expanded


def open_dataset(root: PathLike, layout: str = "auto") -> Sequence[Sample]:
    """Lazy sample sequence of a dataset folder in ``layout`` (``auto``, ``dsb``, ``labels``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}; expected one of {LAYOUTS}")
    layout = detect_layout(root) if layout == "auto" else layout
    return DSBDataset(root) if layout == "dsb" else LabelImageDataset(root)


_FAST_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]
#: 1-bit PNG: masks read back as 0/255 uint8, ~3x faster to write than 8-bit ones
_MASK_PNG = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 1,
             cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def _write_png(path: Path, image: np.ndarray, params: List[int] = _FAST_PNG) -> None:
    if not cv2.imwrite(str(path), image, params):
        raise OSError(f"could not write {str(path)!r} (dtype {image.dtype}, shape {image.shape})")


def _natural_key(path: Path) -> Tuple:
    """Sort ``2.png`` before ``10.png``; non-numeric stems after numeric ones, by name."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_dsb(sample: Sample, root: PathLike, overwrite: bool = False) -> Path:
    """Write ``sample`` as ``<root>/<name>/images/<name>.png`` + ``masks/<k>.png`` (one
    1-bit PNG per instance, read back as 0/255; ``k`` = its id). The folder is assembled under a temporary
    name and renamed, so an interrupted run never leaves a partial sample.

    Returns the sample folder. An existing folder is kept unless ``overwrite``.
    """
    if not sample.name or "/" in sample.name or sample.name.startswith("."):
        raise ValueError(f"sample name {sample.name!r} cannot be a DSB id (non-empty, no '/', no leading '.')")
    root = Path(root)
    final = root / sample.name
    if final.exists() and not overwrite:
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sample.name}.", dir=root))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; a dataset should be readable like any folder
    try:
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        _write_png(staging / "images" / f"{sample.name}.png", sample.image)
        ids, bounds = label_extents(sample.labels)
        for label, (y1, x1, y2, x2) in zip(ids.tolist(), bounds.tolist()):
            mask = np.zeros(sample.labels.shape, np.uint8)
            mask[y1:y2 + 1, x1:x2 + 1] = (sample.labels[y1:y2 + 1, x1:x2 + 1] == label) * np.uint8(255)
            _write_png(staging / "masks" / f"{label}.png", mask, _MASK_PNG)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def write_label_layout(sample: Sample, root: PathLike, overwrite: bool = False) -> Tuple[Path, Path]:
    """Write ``sample`` as ``<root>/images/<name>.png`` + ``<root>/masks/<name>.tif``
    (uint16 label image, uint32 above 65,535 cells). Returns both paths."""
    root = Path(root)
    image_path, mask_path = root / "images" / f"{sample.name}.png", root / "masks" / f"{sample.name}.tif"
    if image_path.exists() and mask_path.exists() and not overwrite:
        return image_path, mask_path
    top = int(sample.labels.max(initial=0))
    labels = sample.labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    write_label_image(mask_path, labels)
    write_image(image_path, sample.image)  # written last: its presence marks a complete pair
    return image_path, mask_path
