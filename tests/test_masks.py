import numpy as np
import pytest

from ancis_fast.masks import PatchMasks, tight_patch


def test_dense_round_trip_and_geometry():
    rng = np.random.default_rng(0)
    dense = np.zeros((3, 9, 11), bool)
    dense[0, 2:5, 3:9] = rng.random((3, 6)) > 0.3
    dense[0, 2, 3] = dense[0, 4, 8] = True  # fix the bounding box
    dense[2, 8, 10] = True
    masks = PatchMasks.from_dense(dense)
    assert masks.patches[0].shape == (3, 6) and masks.origins[0].tolist() == [2, 3]
    assert masks.patches[1].shape == (0, 0)
    np.testing.assert_array_equal(masks.dense(), dense)
    np.testing.assert_array_equal(masks.mask(2), dense[2])
    assert masks.areas.tolist() == dense.sum(axis=(1, 2)).tolist()
    ys, xs = np.nonzero(dense[0])
    np.testing.assert_allclose(masks.centroids[0], [ys.mean(), xs.mean()])
    assert np.isnan(masks.centroids[1]).all()
    np.testing.assert_array_equal(masks[[2, 0]].dense(), dense[[2, 0]])


def test_paint_later_wins():
    dense = np.zeros((2, 4, 4), bool)
    dense[0, :2, :2] = True
    dense[1, 1:3, 1:3] = True
    canvas = PatchMasks.from_dense(dense).paint(np.zeros((4, 4), np.uint16), [5, 7])
    assert canvas[0, 0] == 5 and canvas[1, 1] == 7 and canvas[3, 3] == 0


def test_patch_outside_the_image_is_rejected():
    with pytest.raises(ValueError, match="leaves"):
        PatchMasks([np.ones((3, 3), bool)], np.array([[2, 0]]), (4, 4))


def test_tight_patch_of_empty_mask():
    patch, origin = tight_patch(np.zeros((5, 5), bool))
    assert patch.shape == (0, 0) and origin == (0, 0)
