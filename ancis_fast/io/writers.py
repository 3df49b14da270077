"""Writing results: label images, JSON, CSV and overlays, each atomically."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Sequence, Union

import cv2
import numpy as np
import tifffile

from ..instances import Instances
from .contours import geojson_features, outlines

PathLike = Union[str, os.PathLike]
SAVE_KINDS = ("labels", "json", "csv", "overlay", "rois", "geojson")
DEFAULT_SAVE = ("labels", "json", "csv", "overlay")
#: the temporary files of :func:`atomic_path`: ``.<stem>.<writer's pid>.<mkstemp's 8 chars>.tmp<suffix>``
TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.\w+)?")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` only
    when the block finishes without error (an exception, Ctrl-C included, removes it), so a
    reader never sees a half-written file. A killed process leaves its temporary file:
    :func:`remove_stale_temp_files` removes those."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name tells a stale file (its writer is gone) from one being written
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{path.suffix}",
                                   dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temp_files(folder: PathLike) -> List[Path]:
    """Delete the temporary files that :func:`atomic_path` left in ``folder`` (not its
    sub-folders) when its process was killed; returns them. Only names of that pattern
    whose writing process no longer runs are touched, so a run writing into the same folder
    at the same time keeps its files."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMP_NAME.fullmatch(path.name)
        if match and path.is_file() and not _process_exists(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write a PNG/TIFF/JPEG atomically (TIFF through tifffile, zlib-compressed)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in (".tif", ".tiff"):
            tifffile.imwrite(tmp, image, compression="zlib")
        elif not cv2.imwrite(str(tmp), image):
            raise ValueError(f"OpenCV could not write {str(path)!r} (dtype {image.dtype}, shape {image.shape})")


def write_label_image(path: PathLike, labels: np.ndarray) -> None:
    """Label image to ``.tif`` (uint16/uint32) or ``.png`` (uint16 only)."""
    if Path(path).suffix.lower() == ".png" and labels.dtype != np.uint16:
        raise ValueError(f"PNG label images hold at most 65,535 cells; write {str(path)!r} as .tif instead")
    write_image(path, labels)


def overlay(bgr8: np.ndarray, labels: np.ndarray, alpha: float = 0.35, seed: int = 0) -> np.ndarray:
    """8-bit BGR image with each label tinted in a random colour and outlined."""
    palette = np.random.default_rng(seed).integers(64, 256, size=(int(labels.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    colours = palette[labels]
    foreground = labels > 0
    out = bgr8.copy()
    out[foreground] = (bgr8[foreground] * (1 - alpha) + colours[foreground] * alpha).astype(np.uint8)
    edges = np.zeros_like(foreground)
    edges[:-1] |= labels[:-1] != labels[1:]
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges &= foreground
    out[edges] = colours[edges]
    return out


def output_paths(out_dir: PathLike, stem: str, kinds: Iterable[str], label_format: str = "tif") -> Dict[str, Path]:
    """Where :func:`write_instances` puts each requested kind for an input named ``stem``."""
    out_dir = Path(out_dir)
    names = {"labels": f"{stem}_labels.{label_format}", "json": f"{stem}.json", "csv": f"{stem}.csv",
             "overlay": f"{stem}_overlay.png", "rois": f"{stem}_rois.zip", "geojson": f"{stem}.geojson"}
    return {kind: out_dir / names[kind] for kind in kinds}


def output_stems(paths: Sequence[Path]) -> List[str]:
    """Unique output names for input files: the file stem, prefixed by its folders below the
    inputs' common folder when two inputs share a stem (``a/x.png``, ``b/x.png`` -> ``a__x``,
    ``b__x``)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    return ["__".join(p.resolve().relative_to(root).with_suffix("").parts) for p in paths]


def write_imagej_rois(path: PathLike, instances: Instances) -> None:
    """ImageJ/Fiji ROI set (``.zip``), one polygon ROI per non-empty mask, named by id."""
    try:
        import roifile
    except ImportError as exc:
        raise ValueError("writing ImageJ ROIs needs the roifile package: pip install roifile") from exc
    rois = [roifile.ImagejRoi.frompoints(polygon, name=f"cell_{i + 1:05d}")
            for i, polygon in enumerate(outlines(instances.mask_patches)) if polygon is not None]
    with atomic_path(path) as tmp:
        if rois:
            roifile.roiwrite(tmp, rois, mode="w")
        else:  # an empty but valid zip: ImageJ opens it as "no ROIs"
            zipfile.ZipFile(tmp, "w").close()


def write_instances(instances: Instances, out_dir: PathLike, stem: str, kinds: Iterable[str] = DEFAULT_SAVE,
                    bgr8: np.ndarray | None = None, label_format: str = "tif") -> Dict[str, Path]:
    """Write the requested outputs of one image; returns ``{kind: path}``.

    ``kinds`` is any of ``labels`` (``<stem>_labels.tif|png``), ``json`` (with RLE masks),
    ``csv``, ``overlay`` (``<stem>_overlay.png``, needs ``bgr8``), ``rois`` (ImageJ ROI
    set ``<stem>_rois.zip``), ``geojson`` (``<stem>.geojson`` polygons for QuPath/napari).
    All of them describe ``instances.without_overlaps()``: every pixel belongs to one cell
    (where masks overlap the higher score wins) and a cell left without pixels is dropped,
    so cell ``id`` in the tables is label ``id`` in the label image, with the area given.
    """
    kinds = list(kinds)
    unknown = set(kinds) - set(SAVE_KINDS)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; expected some of {SAVE_KINDS}")
    paths = output_paths(out_dir, stem, kinds, label_format)
    instances = instances.without_overlaps()
    labels = instances.label_image() if {"labels", "overlay"} & set(kinds) else None
    if "labels" in paths:
        write_label_image(paths["labels"], labels)
    if "json" in paths:
        write_text(paths["json"], instances.to_json(include_masks=True))
    if "csv" in paths:
        write_text(paths["csv"], instances.to_csv())
    if "overlay" in paths:
        if bgr8 is None:
            raise ValueError("an overlay needs the 8-bit BGR image (bgr8=...)")
        write_image(paths["overlay"], overlay(bgr8, labels))
    if "rois" in paths:
        write_imagej_rois(paths["rois"], instances)
    if "geojson" in paths:
        write_text(paths["geojson"], json.dumps(geojson_features(instances.mask_patches, instances.scores)))
    return paths
