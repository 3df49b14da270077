"""Mask outlines as polygons, for ImageJ ROIs and GeoJSON (QuPath, napari)."""
from __future__ import annotations

from typing import List, Optional

import cv2
import numpy as np

from ..masks import PatchMasks


def outline(patch: np.ndarray, origin: np.ndarray) -> Optional[np.ndarray]:
    """Outer contour of the largest connected part of a mask patch.

    Returns float64 ``[K,2]`` ``(x, y)`` vertices in image pixel coordinates (pixel
    centres, OpenCV's convention), or None for an empty mask.
    """
    if patch.size == 0 or not patch.any():
        return None
    contours, _ = cv2.findContours(patch.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    largest = max(contours, key=cv2.contourArea)
    return largest[:, 0, :].astype(np.float64) + np.array([origin[1], origin[0]], np.float64)


def outlines(masks: PatchMasks) -> List[Optional[np.ndarray]]:
    return [outline(p, o) for p, o in zip(masks.patches, masks.origins)]


def geojson_features(masks: PatchMasks, scores: np.ndarray) -> dict:
    """GeoJSON FeatureCollection of cell polygons ``(x, y)``, one feature per non-empty mask,
    with QuPath's ``objectType: detection`` and the score and id as properties."""
    features = []
    for i, polygon in enumerate(outlines(masks)):
        if polygon is None:
            continue
        ring = polygon.tolist() + [polygon[0].tolist()]  # GeoJSON rings are closed
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection", "id": i + 1, "score": float(scores[i]),
                           "classification": {"name": "cell"}},
        })
    return {"type": "FeatureCollection", "features": features}
