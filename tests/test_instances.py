"""The result structure and its conversions."""
import csv
import io
import json

import numpy as np
import pytest

from ancis_fast import Instances
from ancis_fast.instances import CSV_COLUMNS, mask_to_rle, rle_to_mask


def _two_overlapping():
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:4, 1:4] = True  # 9 px, centroid (2, 2)
    masks[1, 2:6, 2:8] = True  # 24 px, overlaps the first at rows 2-3, cols 2-3
    boxes = np.array([[1, 1, 4, 4], [2, 2, 6, 8]], np.float32)
    return Instances(boxes, np.array([0.9, 0.7], np.float32), masks)


def test_label_image_puts_the_higher_score_on_top():
    inst = _two_overlapping()
    labels = inst.label_image()
    assert labels.dtype == np.uint16
    assert labels[2, 2] == 1 and labels[5, 7] == 2 and labels[0, 0] == 0
    for k in (1, 2):  # every labelled pixel belongs to its mask
        assert inst.masks[k - 1][labels == k].all()
    assert ((labels > 0) == inst.masks.any(0)).all()


def test_label_image_switches_to_uint32_past_65535():
    n = 65536
    masks = np.ones((n, 1, 1), bool)
    inst = Instances(np.zeros((n, 4), np.float32), np.linspace(1, 0.5, n, dtype=np.float32), masks)
    labels = inst.label_image()
    assert labels.dtype == np.uint32 and labels[0, 0] == 1


def test_geometry_and_slicing():
    inst = _two_overlapping()
    assert len(inst) == 2 and inst.image_size == (6, 8)
    assert inst.areas.tolist() == [9, 24]
    np.testing.assert_allclose(inst.centroids[0], [2.0, 2.0])
    np.testing.assert_array_equal(inst.xyxy[1], [2, 2, 8, 6])
    first = inst[0]
    assert len(first) == 1 and first.scores[0] == np.float32(0.9) and first.masks.shape == (1, 6, 8)
    assert len(inst[inst.scores > 0.8]) == 1 and len(inst[:0]) == 0


def test_json_and_csv_rows():
    inst = _two_overlapping()
    data = json.loads(inst.to_json(include_masks=True))
    assert data["num_instances"] == 2 and data["image_size"] == [6, 8]
    second = data["instances"][1]
    assert second["id"] == 2 and second["area"] == 24 and second["y2"] == 6.0
    np.testing.assert_array_equal(rle_to_mask(second["rle"]), inst.masks[1])
    rows = list(csv.DictReader(io.StringIO(inst.to_csv())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert float(rows[0]["centroid_x"]) == 2.0 and int(rows[1]["area"]) == 24


def test_rle_round_trip_and_coco_convention():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 5)) > 0.5
    mask[0, 0] = True
    rle = mask_to_rle(mask)
    assert rle["counts"][0] == 0  # COCO RLE starts with a run of zeros
    assert sum(rle["counts"]) == 35
    np.testing.assert_array_equal(rle_to_mask(rle), mask)


def test_empty_instances():
    inst = Instances.empty((5, 4))
    assert len(inst) == 0 and inst.label_image().shape == (5, 4) and not inst.label_image().any()
    assert inst.to_dict()["instances"] == [] and inst.to_csv().strip() == ",".join(CSV_COLUMNS)
    assert inst.centroids.shape == (0, 2)


def test_patch_rle_equals_dense_rle():
    from ancis_fast.instances import patch_to_rle

    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = np.zeros((9, 7), bool)
        y, x = rng.integers(0, 9), rng.integers(0, 7)
        mask[y:y + rng.integers(0, 5), x:x + rng.integers(0, 5)] = True
        mask &= rng.random((9, 7)) > 0.3
        mask[8, 6] = rng.random() > 0.5  # runs that touch the end of the image
        mask[0, 0] = rng.random() > 0.5  # and the start
        rows, cols = np.nonzero(mask)
        if len(rows):
            origin = (rows.min(), cols.min())
            patch = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        else:
            origin, patch = (0, 0), np.zeros((0, 0), bool)
        assert patch_to_rle(patch, origin, mask.shape) == mask_to_rle(mask)


def test_without_overlaps_gives_each_pixel_to_the_higher_score_and_drops_hidden_cells():
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:4, 1:4] = True  # 9 px, best score
    masks[1, 2:6, 2:8] = True  # 24 px, loses rows 2-3 x cols 2-3 (4 px) to the first
    masks[2, 2:3, 2:3] = True  # 1 px, hidden under the first
    inst = Instances(np.zeros((3, 4), np.float32), np.array([0.9, 0.7, 0.5], np.float32), masks)
    inst.meta["zoom"] = 1.0
    assert inst.visible().areas.tolist() == [9, 20, 0]
    resolved = inst.without_overlaps()
    assert len(resolved) == 2 and resolved.scores.tolist() == inst.scores[:2].tolist()
    assert resolved.areas.tolist() == [9, 20] and resolved.meta == {"zoom": 1.0}
    assert not (resolved.masks[0] & resolved.masks[1]).any()
    np.testing.assert_array_equal(resolved.label_image(), inst.label_image())
    np.testing.assert_allclose(resolved.centroids[1], np.argwhere(inst.label_image() == 2).mean(0))


def test_cat_concatenates_every_field_in_order():
    inst = _two_overlapping()
    inst.meta["frame_index"] = 3
    joined = Instances.cat([inst[1], inst[0], Instances.empty(inst.image_size)])
    assert len(joined) == 2 and joined.meta == {"frame_index": 3}
    np.testing.assert_array_equal(joined.boxes, inst.boxes[[1, 0]])
    np.testing.assert_array_equal(joined.scores, inst.scores[[1, 0]])
    np.testing.assert_array_equal(joined.labels, inst.labels[[1, 0]])
    np.testing.assert_array_equal(joined.masks, inst.masks[[1, 0]])
    with pytest.raises(ValueError, match="image sizes"):
        Instances.cat([inst, Instances.empty((6, 9))])
    with pytest.raises(ValueError, match="at least one Instances"):
        Instances.cat([])
