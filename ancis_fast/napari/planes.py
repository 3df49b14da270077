"""Between an image layer and the predictor: the layer's data as planes (each the image
:meth:`~ancis_fast.Predictor.predict` takes) and the cells found in them as label ids, a
features table and boxes. No Qt or napari import: these work on the layer's data and flags.

Axis order follows napari: ``(*leading, H, W)`` for gray data, ``(*leading, H, W, C)`` for
RGB(A); the leading axes (time, z, ...) index the planes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..instances import Instances

Plane = Tuple[int, ...]  # index along the leading axes; () for a 2-D image
Table = Dict[str, np.ndarray]

#: the features of each cell, beside ``index`` (its label id) and the plane's axes
CELL_COLUMNS = ("score", "area", "y1", "x1", "y2", "x2")


@dataclass(frozen=True)
class ImageStack:
    """An image layer's data (numpy, dask or zarr array) seen as planes."""

    name: str
    data: Any
    rgb: bool

    @classmethod
    def from_layer(cls, layer: Any) -> "ImageStack":
        """The data of a napari Image layer (its full-resolution level if multiscale);
        ``ValueError`` naming the layer when it cannot be segmented."""
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        name, rgb, shape = layer.name, bool(layer.rgb), tuple(data.shape)
        if len(shape) - rgb < 2 or min(shape) == 0:
            raise ValueError(f"layer {name!r} has shape {shape}; expected a 2-D image (H, W) or a stack of them")
        if not rgb and shape[-1] in (3, 4) and len(shape) >= 3:
            raise ValueError(
                f"layer {name!r} has shape {shape}: its last axis looks like {shape[-1]} colour channels, but the "
                f"layer is not RGB, so napari shows it as {shape[-3]} planes {shape[-1]} px wide. Open it as RGB "
                "(viewer.add_image(data, rgb=True)) or pick one channel (viewer.add_image(data, channel_axis=-1))")
        dtype = np.dtype(data.dtype)
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or dtype == bool:
            raise ValueError(f"layer {name!r} holds {dtype} values; expected an integer or float image")
        return cls(name, data, rgb)

    @property
    def leading_shape(self) -> Tuple[int, ...]:
        """Sizes of the axes before each plane (``()`` for a 2-D image)."""
        return tuple(self.data.shape[: self.data.ndim - 2 - self.rgb])

    @property
    def plane_shape(self) -> Tuple[int, int]:
        """``(H, W)`` of each plane."""
        height, width = self.data.shape[len(self.leading_shape) : len(self.leading_shape) + 2]
        return int(height), int(width)

    @property
    def labels_shape(self) -> Tuple[int, ...]:
        """The shape of a label image of the whole layer: ``(*leading, H, W)``."""
        return self.leading_shape + self.plane_shape

    def planes(self) -> List[Plane]:
        """Every plane's index, in order."""
        return [tuple(int(i) for i in index) for index in np.ndindex(*self.leading_shape)]

    def plane_at(self, data_position: Sequence[float]) -> Plane:
        """The plane shown at ``data_position`` (data coordinates of all the layer's
        non-channel axes, e.g. from ``layer.world_to_data``): leading ones rounded, clipped."""
        leading = np.rint(np.asarray(data_position, float)[: len(self.leading_shape)]).astype(int)
        return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(leading, self.leading_shape))

    def image(self, plane: Plane) -> np.ndarray:
        """Plane ``plane`` as :meth:`~ancis_fast.Predictor.predict` takes it: ``HxW`` gray,
        or ``HxWx3`` BGR for RGB(A) data (alpha dropped); a copy, so a source that later
        writes into the layer's array does not change it."""
        image = np.array(self.data[plane])
        if self.rgb:
            image = image[..., 2::-1]  # napari's RGB -> the package's BGR
        return np.ascontiguousarray(image)


@dataclass
class PlaneCells:
    """The cells found in one plane, as the Labels layer shows them: ids ``1..N`` by
    descending score, every pixel given to one cell (:meth:`Instances.without_overlaps`)."""

    plane: Plane
    labels: np.ndarray  # HxW, 0 = background
    scores: np.ndarray  # [N]
    areas: np.ndarray  # [N] visible px
    boxes: np.ndarray  # [N, 4] (y1, x1, y2, x2) in plane pixels

    @classmethod
    def from_instances(cls, instances: Instances, plane: Plane = ()) -> "PlaneCells":
        shown = instances.without_overlaps()
        return cls(plane, shown.label_image(), shown.scores, shown.areas, shown.boxes)

    def __len__(self) -> int:
        return len(self.scores)


class CellTable:
    """The cells of every plane segmented so far, numbered across planes so that each label
    id of a stack's Labels layer names one cell. Re-segmenting a plane replaces its cells
    (new ids after the highest); a 2-D image (one plane) always gets ids ``1..N``."""

    def __init__(self, leading_axes: int):
        self.leading_axes = leading_axes
        self._cells: Dict[Plane, Tuple[int, PlaneCells]] = {}  # plane -> (first id, cells)
        self._next_id = 1

    def add(self, cells: PlaneCells) -> np.ndarray:
        """Record ``cells``; returns their label image with the ids they get here (uint32
        for a stack)."""
        if set(self._cells) <= {cells.plane}:
            self._next_id = 1
        first = self._next_id
        self._cells[cells.plane] = (first, cells)
        self._next_id += len(cells)
        if self.leading_axes == 0:
            return cells.labels
        labels = cells.labels.astype(np.uint32)
        labels[labels > 0] += np.uint32(first - 1)
        return labels

    def features(self) -> Table:
        """One row per cell: ``index`` (its label id), the plane's ``axis0``, ``axis1``...,
        and :data:`CELL_COLUMNS`; planes in order."""
        parts = [self._plane_table(first, cells) for first, cells in
                 (self._cells[plane] for plane in sorted(self._cells))]
        columns = ["index", *self._axis_names(), *CELL_COLUMNS]
        if not parts:
            return {name: np.zeros(0) for name in columns}
        return {name: np.concatenate([part[name] for part in parts]) for name in columns}

    def rectangles(self) -> List[np.ndarray]:
        """Each cell's box as a napari rectangle: 4 vertices ``(*plane, y, x)``."""
        out = []
        for plane in sorted(self._cells):
            for y1, x1, y2, x2 in self._cells[plane][1].boxes:
                corners = [(y1, x1), (y1, x2), (y2, x2), (y2, x1)]
                out.append(np.array([(*plane, y, x) for y, x in corners], np.float32))
        return out

    def _axis_names(self) -> List[str]:
        return [f"axis{i}" for i in range(self.leading_axes)]

    def _plane_table(self, first: int, cells: PlaneCells) -> Table:
        n = len(cells)
        table: Table = {"index": np.arange(first, first + n, dtype=np.int64)}
        for name, position in zip(self._axis_names(), cells.plane):
            table[name] = np.full(n, position, np.int64)
        table.update(score=cells.scores.astype(np.float32), area=cells.areas.astype(np.int64))
        for column, name in enumerate(("y1", "x1", "y2", "x2")):
            table[name] = cells.boxes[:, column].astype(np.float32)
        return table
