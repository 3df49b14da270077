"""Boxes from label maps (spec §9) and label-map utilities."""
import numpy as np
import pytest

from ancis_fast.data.sample import (
    Sample, boxes_from_labels, instance_ids, label_extents, masks_to_labels, relabel_sequential,
)


def test_boxes_are_inclusive_extents():
    labels = np.zeros((10, 12), np.int32)
    labels[2:5, 3:9] = 7  # rows 2..4, cols 3..8
    boxes, ids = boxes_from_labels(labels)
    assert ids.tolist() == [7]
    assert boxes.dtype == np.float32
    assert boxes.tolist() == [[2, 3, 4, 8]]


def test_box_is_extent_of_largest_component():
    labels = np.zeros((20, 20), np.int32)
    labels[1:3, 1:3] = 1  # small piece (4 px)
    labels[10:16, 8:12] = 1  # large piece (24 px)
    labels[0, 19] = 2  # single pixel -> dropped
    boxes, ids = boxes_from_labels(labels)
    assert ids.tolist() == [1]
    assert boxes.tolist() == [[10, 8, 15, 11]]


def test_diagonal_pixels_are_one_component():
    labels = np.zeros((6, 6), np.int32)
    labels[[0, 1, 2, 3], [0, 1, 2, 3]] = 4  # 8-connected diagonal
    boxes, _ = boxes_from_labels(labels)
    assert boxes.tolist() == [[0, 0, 3, 3]]


@pytest.mark.parametrize("height,width,kept", [(1, 5, False), (2, 5, False), (3, 5, True), (3, 2, False)])
def test_extent_of_one_pixel_or_less_is_dropped(height, width, kept):
    labels = np.zeros((8, 8), np.int32)
    labels[1:1 + height, 1:1 + width] = 1
    boxes, _ = boxes_from_labels(labels)
    assert len(boxes) == int(kept)  # release: drop when y2 - y1 <= 1 or x2 - x1 <= 1


def test_label_extents_and_ids():
    labels = np.zeros((5, 5), np.int32)
    labels[0, 0] = 3
    labels[4, 1:4] = 9
    ids, bounds = label_extents(labels)
    assert ids.tolist() == [3, 9]
    assert bounds.tolist() == [[0, 0, 0, 0], [4, 1, 4, 3]]
    assert instance_ids(labels).tolist() == [3, 9]
    assert label_extents(np.zeros((3, 3), np.int32))[1].shape == (0, 4)


def test_relabel_and_masks_to_labels():
    labels = np.array([[0, 5, 5], [9, 0, 2]], np.int32)
    assert relabel_sequential(labels).tolist() == [[0, 2, 2], [3, 0, 1]]
    masks = np.zeros((2, 2, 3), bool)
    masks[0, 0, :2] = True
    masks[1, 0, 1:] = True  # overlaps the first: the later wins
    assert masks_to_labels(masks).tolist() == [[1, 2, 2], [0, 0, 0]]


def test_sample_checks_sizes():
    with pytest.raises(ValueError, match="same height and width"):
        Sample(np.zeros((4, 5), np.uint8), np.zeros((4, 4), np.int32), "x")
    with pytest.raises(ValueError, match="negative"):
        instance_ids(np.array([[-1, 0]]))
