"""The result of segmenting one image: boxes, scores and masks of its cells."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

CSV_COLUMNS = ("id", "score", "y1", "x1", "y2", "x2", "area", "centroid_y", "centroid_x")

Index = Union[int, slice, Sequence[int], np.ndarray]


@dataclass
class Instances:
    """Cell instances of one image, sorted by descending score.

    Attributes:
        boxes: float32 ``[N,4]`` ``(y1, x1, y2, x2)`` in original-image pixels (see ``xyxy``).
        scores: float32 ``[N]`` detection confidence.
        masks: bool ``[N,H,W]`` at the original image size. A detection too small for any
            feature level (spec §5) keeps its box and has an empty mask.
        labels: int64 ``[N]`` class ids (1 = cell).
        image_size: ``(H, W)`` of the original image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    labels: np.ndarray = field(default=None)  # type: ignore[assignment]
    image_size: Tuple[int, int] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.scores)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(n, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.masks = np.asarray(self.masks, dtype=bool)
        if self.image_size is None:
            self.image_size = tuple(self.masks.shape[1:])  # type: ignore[assignment]
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.masks = self.masks.reshape(n, *self.image_size)
        self.labels = np.ones(n, np.int64) if self.labels is None else np.asarray(self.labels, np.int64)
        if len(self.labels) != n:
            raise ValueError(f"labels has {len(self.labels)} entries for {n} instances")

    @classmethod
    def empty(cls, image_size: Tuple[int, int]) -> "Instances":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, *image_size), bool),
                   image_size=image_size)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Index) -> "Instances":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Instances(self.boxes[index], self.scores[index], self.masks[index], self.labels[index], self.image_size)

    def __repr__(self) -> str:
        return f"Instances(num={len(self)}, image_size={self.image_size})"

    @property
    def xyxy(self) -> np.ndarray:
        """Boxes as ``(x1, y1, x2, y2)``, the order torchvision and COCO tools use."""
        return self.boxes[:, [1, 0, 3, 2]]

    @property
    def areas(self) -> np.ndarray:
        """int64 ``[N]`` mask areas in pixels."""
        return self.masks.sum(axis=(1, 2), dtype=np.int64)

    @property
    def centroids(self) -> np.ndarray:
        """float64 ``[N,2]`` mask centroids ``(y, x)``; NaN for empty masks."""
        ys = np.arange(self.image_size[0], dtype=np.float64)
        xs = np.arange(self.image_size[1], dtype=np.float64)
        areas = self.areas.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cy = self.masks.sum(axis=2) @ ys / areas
            cx = self.masks.sum(axis=1) @ xs / areas
        return np.stack([cy, cx], axis=1) if len(self) else np.zeros((0, 2))

    def label_image(self) -> np.ndarray:
        """``[H,W]`` label image: 0 background, instance ``i`` (score order) -> ``i + 1``.

        Where masks overlap the higher-scoring instance wins. uint16, or uint32 when there
        are more than 65,535 instances.
        """
        dtype = np.uint16 if len(self) <= np.iinfo(np.uint16).max else np.uint32
        labels = np.zeros(self.image_size, dtype)
        for i in range(len(self) - 1, -1, -1):  # lowest score first, so the best ends on top
            labels[self.masks[i]] = i + 1
        return labels

    def rows(self) -> List[Dict[str, Any]]:
        """One dict per instance with the :data:`CSV_COLUMNS` fields."""
        areas, centroids = self.areas, self.centroids
        return [
            {
                "id": i + 1, "score": float(self.scores[i]),
                "y1": float(self.boxes[i, 0]), "x1": float(self.boxes[i, 1]),
                "y2": float(self.boxes[i, 2]), "x2": float(self.boxes[i, 3]),
                "area": int(areas[i]),
                "centroid_y": _finite_or_none(centroids[i, 0]), "centroid_x": _finite_or_none(centroids[i, 1]),
            }
            for i in range(len(self))
        ]

    def to_dict(self, include_masks: bool = False) -> Dict[str, Any]:
        """JSON-ready dict. With ``include_masks`` each instance carries a COCO-style
        uncompressed RLE (``{"size": [H, W], "counts": [...]}``, column-major)."""
        instances = self.rows()
        for row, label in zip(instances, self.labels):
            row["label"] = int(label)
        if include_masks:
            for row, mask in zip(instances, self.masks):
                row["rle"] = mask_to_rle(mask)
        return {"image_size": list(self.image_size), "box_format": "y1x1y2x2", "num_instances": len(self),
                "instances": instances}

    def to_json(self, include_masks: bool = False, indent: int = 1) -> str:
        return json.dumps(self.to_dict(include_masks), indent=indent)

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buffer.getvalue()


def _finite_or_none(value: float) -> Any:
    return float(value) if np.isfinite(value) else None


def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
    """Bool ``[H,W]`` -> COCO uncompressed RLE (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`."""
    height, width = rle["size"]
    values = np.arange(len(rle["counts"])) % 2
    flat = np.repeat(values.astype(bool), rle["counts"])
    return flat.reshape((width, height)).T
