import numpy as np
import pytest

from ancis_fast.masks import PatchMasks, positions, tight_patch


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


def test_positions_of_every_index_kind():
    assert positions(2, 4).tolist() == [2] and positions(np.int64(-1), 4).tolist() == [3]
    assert positions(slice(1, None), 4).tolist() == [1, 2, 3]
    assert positions([3, 0], 4).tolist() == [3, 0]
    assert positions(np.array([True, False, False, True]), 4).tolist() == [0, 3]
    with pytest.raises(IndexError):
        positions(4, 4)


def test_cat_puts_the_parts_one_after_another():
    dense = np.zeros((3, 5, 6), bool)
    dense[0, 1:3, 2:5] = dense[1, 4, 0] = dense[2, 0:5, 5] = True
    masks = PatchMasks.from_dense(dense)
    joined = PatchMasks.cat([masks[[0]], masks[1:], PatchMasks.empty((5, 6))])
    np.testing.assert_array_equal(joined.dense(), dense)
    with pytest.raises(ValueError, match="image sizes"):
        PatchMasks.cat([masks, PatchMasks.empty((5, 7))])
    with pytest.raises(ValueError, match="at least one PatchMasks"):
        PatchMasks.cat([])


def test_pickle_keeps_every_patch_and_origin():
    import pickle

    rng = np.random.default_rng(0)
    patches = [rng.random((h, w)) > 0.5 for h, w in [(3, 4), (0, 0), (1, 7), (5, 1)]]
    masks = PatchMasks(patches, np.array([[0, 0], [0, 0], [9, 2], [4, 8]]), (12, 10))
    again = pickle.loads(pickle.dumps(masks))
    assert again.image_size == (12, 10) and len(again) == 4
    np.testing.assert_array_equal(again.origins, masks.origins)
    np.testing.assert_array_equal(again.dense(), masks.dense())
    assert [p.shape for p in again.patches] == [p.shape for p in patches]
