"""The result of segmenting one image: boxes, scores and masks of its cells."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .masks import Index, PatchMasks, common_image_size, positions, tight_patch

CSV_COLUMNS = ("id", "score", "y1", "x1", "y2", "x2", "area", "centroid_y", "centroid_x")


class Instances:
    """Cell instances of one image, sorted by descending score.

    Attributes:
        boxes: float32 ``[N,4]`` ``(y1, x1, y2, x2)`` in original-image pixels (see ``xyxy``).
        scores: float32 ``[N]`` detection confidence.
        labels: int64 ``[N]`` class ids (1 = cell).
        image_size: ``(H, W)`` of the original image.
        mask_patches: the masks as tight patches (:class:`~ancis_fast.masks.PatchMasks`);
            ``masks`` gives them as a dense bool ``[N,H,W]`` array (built once, on first use).
            A detection too small for any feature level (spec §5) has an empty mask.
        meta: free-form information about how the result was made (frame index, latency).
    """

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, masks: Union[np.ndarray, PatchMasks],
                 labels: Optional[np.ndarray] = None, image_size: Optional[Tuple[int, int]] = None):
        n = len(scores)
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(n, 4)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(n)
        self.labels = np.ones(n, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
        if isinstance(masks, PatchMasks):
            self.mask_patches = masks
        else:
            masks = np.asarray(masks, dtype=bool)
            if image_size is not None:
                masks = masks.reshape(n, *image_size)
            self.mask_patches = PatchMasks.from_dense(masks)
        self.image_size = self.mask_patches.image_size
        if image_size is not None and tuple(image_size) != self.image_size:
            raise ValueError(f"image_size {tuple(image_size)} differs from the masks' {self.image_size}")
        if not len(self.labels) == len(self.mask_patches) == n:
            raise ValueError(f"{n} scores but {len(self.labels)} labels and {len(self.mask_patches)} masks")
        self._dense: Optional[np.ndarray] = None
        self.meta: Dict[str, Any] = {}  # e.g. frame_index and latency_ms from Predictor.stream

    @classmethod
    def empty(cls, image_size: Tuple[int, int]) -> "Instances":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), PatchMasks.empty(image_size))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Index) -> "Instances":
        chosen = positions(index, len(self))
        out = Instances(self.boxes[chosen], self.scores[chosen], self.mask_patches[chosen], self.labels[chosen])
        out.meta = dict(self.meta)
        return out

    @classmethod
    def cat(cls, parts: Sequence["Instances"]) -> "Instances":
        """The instances of ``parts`` (all of one image size) one after another, in the
        order given (not re-sorted by score); ``meta`` is the first part's."""
        image_size = common_image_size(parts, "Instances")
        out = cls(np.concatenate([p.boxes for p in parts]), np.concatenate([p.scores for p in parts]),
                  PatchMasks.cat([p.mask_patches for p in parts]), np.concatenate([p.labels for p in parts]),
                  image_size)
        out.meta = dict(parts[0].meta)
        return out

    def resized(self, image_size: Tuple[int, int]) -> "Instances":
        """These instances on the same field of view sampled at ``image_size`` ``(H, W)``:
        boxes scaled, masks resampled (:meth:`PatchMasks.resized`); scores, labels and
        meta kept."""
        fy, fx = image_size[0] / self.image_size[0], image_size[1] / self.image_size[1]
        boxes = self.boxes * np.array([fy, fx, fy, fx], np.float32)
        out = Instances(boxes, self.scores, self.mask_patches.resized(image_size), self.labels)
        out.meta = dict(self.meta)
        return out

    def __repr__(self) -> str:
        return f"Instances(num={len(self)}, image_size={self.image_size})"

    @property
    def masks(self) -> np.ndarray:
        """Dense bool ``[N,H,W]`` masks (``N*H*W`` bytes; prefer ``mask_patches`` for many cells)."""
        if self._dense is None:
            self._dense = self.mask_patches.dense()
        return self._dense

    @property
    def xyxy(self) -> np.ndarray:
        """Boxes as ``(x1, y1, x2, y2)``, the order torchvision and COCO tools use."""
        return self.boxes[:, [1, 0, 3, 2]]

    @property
    def areas(self) -> np.ndarray:
        """int64 ``[N]`` mask areas in pixels."""
        return self.mask_patches.areas

    @property
    def centroids(self) -> np.ndarray:
        """float64 ``[N,2]`` mask centroids ``(y, x)``; NaN for empty masks."""
        return self.mask_patches.centroids

    def label_image(self) -> np.ndarray:
        """``[H,W]`` label image: 0 background, instance ``i`` (score order) -> ``i + 1``.

        Where masks overlap the higher-scoring instance wins. uint16, or uint32 when there
        are more than 65,535 instances.
        """
        dtype = np.uint16 if len(self) <= np.iinfo(np.uint16).max else np.uint32
        order = np.arange(len(self))[::-1]  # lowest score first, so the best ends on top
        return self.mask_patches[order].paint(np.zeros(self.image_size, dtype), order + 1)

    def visible(self) -> PatchMasks:
        """The part of each mask that :meth:`label_image` shows (where masks overlap the
        higher score wins): an empty patch for a hidden mask."""
        labels = self.label_image()
        patches, origins = [], []
        for i, ((y, x), patch) in enumerate(zip(self.mask_patches.origins, self.mask_patches.patches)):
            shown, (ty, tx) = tight_patch(labels[y : y + patch.shape[0], x : x + patch.shape[1]] == i + 1)
            patches.append(shown)
            origins.append((y + ty, x + tx) if shown.size else (0, 0))
        return PatchMasks(patches, np.array(origins, np.int64).reshape(-1, 2), self.image_size)

    def without_overlaps(self) -> "Instances":
        """These instances with every pixel given to one of them, by the rule of
        :meth:`label_image` (:meth:`visible`), and those left without a pixel dropped;
        boxes (the detection boxes), scores, labels and meta are kept.

        Each mask is then exactly its id's region of ``label_image()``, so the table
        (:meth:`rows`: ids, areas, centroids) and the label image agree; the writers
        (:func:`~ancis_fast.io.writers.write_instances`) write this form.
        """
        masks = self.visible()
        keep = np.flatnonzero(masks.areas > 0)
        out = Instances(self.boxes[keep], self.scores[keep], masks[keep], self.labels[keep])
        out.meta = dict(self.meta)
        return out

    def rows(self, first_id: int = 1) -> List[Dict[str, Any]]:
        """One dict per instance with the :data:`CSV_COLUMNS` fields; ids count from
        ``first_id`` in this order."""
        areas, centroids = self.areas, self.centroids
        return [
            {
                "id": first_id + i, "score": float(self.scores[i]),
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
            patches = self.mask_patches
            for row, patch, origin in zip(instances, patches.patches, patches.origins):
                row["rle"] = patch_to_rle(patch, origin, self.image_size)
        return {"image_size": list(self.image_size), "box_format": "y1x1y2x2", "num_instances": len(self),
                "instances": instances}

    def to_json(self, include_masks: bool = False, indent: int = 1) -> str:
        return json.dumps(self.to_dict(include_masks), indent=indent)

    def to_csv(self, first_id: int = 1, header: bool = True) -> str:
        """The :data:`CSV_COLUMNS` table (ids from ``first_id``; ``header=False``: rows only,
        to append to a table written in parts)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(self.rows(first_id))
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


def patch_to_rle(patch: np.ndarray, origin: Sequence[int], image_size: Tuple[int, int]) -> Dict[str, Any]:
    """:func:`mask_to_rle` of a patch placed at ``origin`` without building the dense mask."""
    height = image_size[0]
    cols, rows = np.nonzero(patch.T)  # column-major order, as COCO RLE runs
    flat = (cols + origin[1]) * height + rows + origin[0]
    total = image_size[0] * image_size[1]
    if flat.size == 0:
        return {"size": list(image_size), "counts": [total]}
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = flat[np.concatenate([[0], breaks])]
    ends = flat[np.concatenate([breaks - 1, [flat.size - 1]])] + 1
    gaps = starts - np.concatenate([[0], ends[:-1]])
    counts = np.stack([gaps, ends - starts], axis=1).ravel().tolist()
    if ends[-1] < total:
        counts.append(int(total - ends[-1]))
    return {"size": list(image_size), "counts": counts}


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`."""
    height, width = rle["size"]
    values = np.arange(len(rle["counts"])) % 2
    flat = np.repeat(values.astype(bool), rle["counts"])
    return flat.reshape((width, height)).T
