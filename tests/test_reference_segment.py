"""Spec §5 crop rules and §6 mask paste."""
import numpy as np
import torch

from ancis_fast.pipeline.reference import level_crop_bounds, paste_bounds, paste_mask, segment
from conftest import random_models

LEVELS_64 = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]


def _box(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_crop_bounds_round_half_to_even():
    bounds = level_crop_bounds(_box(5, 7, 37, 41), (64, 64), LEVELS_64)
    assert bounds == [
        (5, 7, 37, 41),
        (2, 4, 18, 20),  # 2.5 -> 2, 3.5 -> 4, 18.5 -> 18, 20.5 -> 20
        (1, 2, 9, 10),  # 1.25, 1.75, 9.25, 10.25
        (1, 1, 5, 5),  # 0.625, 0.875, 4.625, 5.125
        (0, 0, 2, 3),  # 0.3125, 0.4375, 2.3125, 2.5625
    ]


def test_crop_collection_stops_below_three_pixels():
    # level 2 spans 2..4 (a difference of 2, kept); level 3 spans 1..2 (difference 1): stop there.
    assert level_crop_bounds(_box(10, 10, 16, 16), (64, 64), LEVELS_64) == [
        (10, 10, 16, 16), (5, 5, 8, 8), (2, 2, 4, 4)]


def test_crop_clipped_to_the_map():
    bounds = level_crop_bounds(_box(-6, 50, 20, 80), (64, 64), LEVELS_64)
    assert bounds[0] == (0, 50, 20, 63)
    assert bounds[1] == (0, 25, 10, 31)


def test_box_without_any_level_gets_no_mask():
    assert level_crop_bounds(_box(10, 10, 11, 30), (64, 64), LEVELS_64) == []  # 1 px tall
    assert level_crop_bounds(_box(70, 70, 90, 90), (64, 64), LEVELS_64) == []  # outside the image
    _, segmenter = random_models("resnet18")
    features = [torch.rand(1, c, h, w) for c, (h, w) in zip((64, 64, 64, 512, 256), LEVELS_64)]
    masks = segment(segmenter, features, torch.stack([_box(5, 7, 37, 41), _box(10, 10, 11, 30)]))
    assert masks[0].shape == (33, 35)  # the level-0 crop, inclusive bounds
    assert masks[1] is None


def test_segment_uses_native_crops_per_box():
    """One decoder pass on exactly the crops of spec §5."""
    _, segmenter = random_models("resnet18")
    features = [torch.rand(1, c, h, w) for c, (h, w) in zip((64, 64, 64, 512, 256), LEVELS_64)]
    box = _box(10, 10, 16, 16)
    crops = [f[:, :, y1:y2 + 1, x1:x2 + 1]
             for f, (y1, x1, y2, x2) in zip(features, [(10, 10, 16, 16), (5, 5, 8, 8), (2, 2, 4, 4)])]
    with torch.no_grad():
        expected = segmenter(crops)[0, 0]
    torch.testing.assert_close(segment(segmenter, features, box[None])[0], expected)


def test_paste_hand_computed():
    prob = np.array([[0.9] * 3, [0.2] * 3, [0.9] * 3], dtype=np.float32)
    box = _box(1.4, 2.6, 3.5, 4.4)  # -> rows 1..4 (3.5 rounds to 4), cols 3..4
    assert paste_bounds(box, (6, 6)) == (1, 3, 4, 4)
    # INTER_LINEAR to 4 rows: source y = -0.125 (clamped), 0.625, 1.375, 2.125 (clamped)
    # -> 0.9, 0.4625, 0.4625, 0.9
    expected = np.zeros((6, 6), bool)
    expected[[1, 4], 3:5] = True
    np.testing.assert_array_equal(paste_mask(prob, box, (6, 6), (6, 6)), expected)
    # nearest resize of the canvas to 12 x 6 doubles the rows
    np.testing.assert_array_equal(paste_mask(prob, box, (6, 6), (12, 6)), np.repeat(expected, 2, axis=0))


def test_paste_threshold_is_inclusive_and_empty_box_gives_empty_mask():
    prob = np.full((3, 3), 0.5, np.float32)
    assert paste_mask(prob, _box(0, 0, 2, 2), (4, 4), (4, 4))[:3, :3].all()
    assert not paste_mask(prob, _box(0, 0, 2, 2), (4, 4), (4, 4), seg_thresh=0.51).any()
    assert paste_bounds(_box(10, 10, 20, 20), (6, 6)) is None
    assert not paste_mask(prob, _box(10, 10, 20, 20), (6, 6), (6, 6)).any()
