"""OME-NGFF label images: the labels of a huge image as a multiscale pyramid with
``image-label`` metadata, the layout napari (napari-ome-zarr) and ome-zarr-py open as labels.

Written as NGFF 0.4 (zarr v2, ``.zattrs``; ``/`` chunk keys), which ome-zarr-py, napari-ome-zarr
and Bio-Formats all read::

    <name>_cells.ome.zarr/           root group
        labels/                      .zattrs {"labels": ["cells"]}
            cells/                   .zattrs {"multiscales": [...], "image-label": {...}}
                0/ 1/ 2/ ...         uint16/uint32 (y, x); level k is level 0 at 1 / 2^k

Level ``k + 1`` keeps every other pixel of level ``k`` (nearest: ids stay ids). The
output never writes into the input: for an OME-Zarr input, ``image-label.source.image``
is the relative path from the label image to it, and its pixel size is carried over.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

NGFF_VERSION = "0.4"
LABEL_NAME = "cells"
Chunk = Tuple[int, int, int, int]  # (y0, y1, x0, x1)


def ngff_path(out: Union[str, os.PathLike], name: str) -> Path:
    """``<out>/<name>_cells.ome.zarr`` (not ``<name>.ome.zarr``: that is often the input)."""
    return Path(out) / f"{name}_cells.ome.zarr"


def pyramid_shapes(shape: Tuple[int, int], chunks: Tuple[int, int], levels: Optional[int] = None) -> List[Tuple[int, int]]:
    """``(H, W)`` of each level: halved (rounded up) until the image fits one chunk, or
    ``levels`` of them when given."""
    shapes = [(int(shape[0]), int(shape[1]))]
    while (len(shapes) < levels) if levels else (shapes[-1][0] > chunks[0] or shapes[-1][1] > chunks[1]):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    return shapes


def create_label_image(root: Path, shape: Tuple[int, int], chunks: Tuple[int, int], dtype: np.dtype,
                       levels: Optional[int] = None, pixel_size: Tuple[float, float] = (1.0, 1.0),
                       source_image: Optional[Path] = None, name: str = LABEL_NAME) -> List[str]:
    """Create the empty pyramid and its metadata under ``root``; returns each level's
    array path (level 0 first). ``pixel_size``: ``(y, x)`` of level 0, in the source image's
    units; ``source_image``: the OME-Zarr image these labels belong to (not written to)."""
    import zarr

    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    labels = group.require_group("labels")
    labels.attrs["labels"] = [name]
    image = labels.require_group(name)
    paths = []
    for level, level_shape in enumerate(pyramid_shapes(shape, chunks, levels)):
        image.create_array(str(level), shape=level_shape, chunks=tuple(min(c, s) for c, s in zip(chunks, level_shape)),
                           dtype=dtype, fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
        paths.append(str(root / "labels" / name / str(level)))
    image.attrs["multiscales"] = [{
        "version": NGFF_VERSION, "name": name,
        "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [pixel_size[0] * 2 ** level, pixel_size[1] * 2 ** level]}]}
            for level in range(len(paths))]}]
    metadata: Dict[str, object] = {"version": NGFF_VERSION}
    if source_image is not None:
        metadata["source"] = {"image": os.path.relpath(Path(source_image).resolve(), (root / "labels" / name).resolve())}
    image.attrs["image-label"] = metadata
    return paths


def level_chunks(path: str) -> List[Chunk]:
    """The chunks ``(y0, y1, x0, x1)`` of the array at ``path``."""
    import zarr

    array = zarr.open_array(path, mode="r")
    (height, width), (ch, cw) = array.shape, array.chunks
    return [(y, min(y + ch, height), x, min(x + cw, width)) for y in range(0, height, ch) for x in range(0, width, cw)]


def downsample_chunk(finer: str, coarser: str, chunk: Chunk) -> None:
    """Fill ``chunk`` of the level at ``coarser`` with every other pixel of the level at ``finer``."""
    import zarr

    y0, y1, x0, x1 = chunk
    source = zarr.open_array(finer, mode="r")
    zarr.open_array(coarser, mode="r+")[y0:y1, x0:x1] = source[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2]


def _multiscales(path: Union[str, os.PathLike]) -> Optional[dict]:
    """The first ``multiscales`` entry of the OME-Zarr group at ``path`` (NGFF 0.4 or 0.5), or
    ``None`` when ``path`` is not one (a plain array, a TIFF)."""
    import zarr

    if not Path(path).is_dir():
        return None
    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    return multiscales[0] if multiscales else None


def source_levels(path: Union[str, os.PathLike]) -> Optional[int]:
    """How many levels the OME-Zarr image at ``path`` has; ``None`` when it is not one."""
    multiscales = _multiscales(path)
    return (len(multiscales.get("datasets", [])) or None) if multiscales else None


def source_pixel_size(path: Union[str, os.PathLike], component: str) -> Tuple[float, float]:
    """``(y, x)`` pixel size of an OME-Zarr image's dataset ``component`` (1, 1 when it
    gives none)."""
    multiscales = _multiscales(path) or {}
    axes = [a["name"] if isinstance(a, dict) else a for a in multiscales.get("axes", [])]
    for dataset in multiscales.get("datasets", []):
        if dataset.get("path") == component:
            for transform in dataset.get("coordinateTransformations", []):
                if transform.get("type") == "scale" and "y" in axes and "x" in axes:
                    return float(transform["scale"][axes.index("y")]), float(transform["scale"][axes.index("x")])
    return 1.0, 1.0

