"""Spec §7 augmentation: geometry follows the image, photometric ranges, crop rule."""
import numpy as np
import pytest

from ancis_fast.data.augment import AugmentConfig, augment, expand, flip_and_rotate, photometric, random_crop, resize_pair
from ancis_fast.data.sample import boxes_from_labels


def _pair(height=60, width=80):
    """Image whose green channel encodes the label, so geometry can be checked exactly."""
    labels = np.zeros((height, width), np.int32)
    labels[5:15, 10:30] = 1
    labels[30:50, 40:45] = 2
    labels[50:58, 70:78] = 3
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1] = labels * 60
    image[..., 0] = 200
    return image, labels


def test_geometry_only_keeps_image_and_labels_aligned():
    image, labels = _pair()
    cfg = AugmentConfig(output_size=(60, 80), brightness=0, contrast=(1, 1), channel_swap=False, p=1.0, rot90=True)
    for seed in range(20):
        out, out_labels = augment(image, labels, np.random.default_rng(seed), cfg)
        inside = out_labels > 0
        # nearest labels vs bilinear image: compare away from edges
        core = inside & (np.abs(out[..., 1] - out_labels * 60) < 1)
        assert core.sum() > 0.5 * inside.sum()


def test_flips_move_boxes_as_expected():
    image, labels = _pair()
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(p=1.0)
    flipped_image, flipped = flip_and_rotate(image, labels, rng, cfg)
    np.testing.assert_array_equal(flipped, labels[::-1, ::-1])
    np.testing.assert_array_equal(flipped_image, image[::-1, ::-1])


def test_photometric_ranges_and_channel_permutation():
    image = np.full((4, 4, 3), 100, np.float32)
    image[..., 2] = 250
    cfg = AugmentConfig(p=1.0)
    for seed in range(30):
        out = photometric(image, np.random.default_rng(seed), cfg)
        assert out.min() >= 0 and out.max() <= 255
        # after brightness delta d in [-32, 32] and factor c in [.5, 1.5], channel values are (v + d) * c
        lows = np.sort(out[0, 0])
        assert (100 - 32) * 0.5 - 1e-3 <= lows[0] <= (100 + 32) * 1.5 + 1e-3


def test_expand_fills_with_median_and_pads_labels():
    image, labels = _pair(20, 20)
    big, big_labels = expand(image.astype(np.float32), labels, np.random.default_rng(1), 2.0)
    assert big.shape[0] >= 20 and big_labels.shape == big.shape[:2]
    assert (big_labels > 0).sum() == (labels > 0).sum()
    assert np.all(big[big_labels == 0][:, 0] == 200)


def test_crop_keeps_instances_whose_centre_stays_inside():
    labels = np.zeros((100, 100), np.int32)
    labels[0:10, 40:60] = 1  # centre row 4.5
    labels[40:60, 40:60] = 2
    image = np.zeros((100, 100, 3), np.float32)
    kept = set()
    for seed in range(40):
        _, cropped = random_crop(image, labels, np.random.default_rng(seed), 0.9)
        ids = set(np.unique(cropped)) - {0}
        assert 2 in ids
        kept |= ids
        assert cropped.shape[0] >= 90 and cropped.shape[1] >= 90
    assert 1 in kept


def test_crop_drops_instance_whose_centre_leaves():
    labels = np.zeros((100, 100), np.int32)
    labels[0:4, 0:4] = 1  # centre (1.5, 1.5)
    outcomes = set()
    for seed in range(60):
        _, cropped = random_crop(np.zeros((100, 100, 3), np.float32), labels, np.random.default_rng(seed), 0.5)
        # replay the crop's draws to know where it was
        rng = np.random.default_rng(seed)
        crop_h, crop_w = (max(1, int(round(100 * rng.uniform(0.5, 1.0)))) for _ in range(2))
        top, left = int(rng.integers(0, 100 - crop_h + 1)), int(rng.integers(0, 100 - crop_w + 1))
        centre_inside = top <= 1.5 < top + crop_h and left <= 1.5 < left + crop_w
        assert (cropped.max() == 1) == centre_inside
        outcomes.add(centre_inside)
    assert outcomes == {True, False}


def test_augment_output_and_determinism():
    image, labels = _pair()
    cfg = AugmentConfig(output_size=(64, 64))
    a = augment(image, labels, np.random.default_rng(5), cfg)
    b = augment(image, labels, np.random.default_rng(5), cfg)
    assert a[0].shape == (64, 64, 3) and a[0].dtype == np.float32 and a[1].dtype == np.int32
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert len(boxes_from_labels(a[1])[0]) >= 1


def test_resize_pair_uses_nearest_for_labels():
    labels = np.array([[1, 2], [3, 4]], np.int32)
    _, big = resize_pair(np.zeros((2, 2, 3), np.float32), labels, (4, 4))
    assert set(np.unique(big)) == {1, 2, 3, 4}


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="HxWx3"):
        augment(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.int32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_expand"):
        AugmentConfig(max_expand=0.5)
