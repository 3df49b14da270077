"""Image conversion to the network input (spec §1) and bad-input errors."""
import cv2
import numpy as np
import pytest

from ancis_fast.pipeline.preprocess import Normalization, preprocess, to_bgr8, to_uint8


def test_bgr8_follows_the_spec_exactly(bgr_image):
    batch, original = preprocess(bgr_image, (128, 96))
    expected = cv2.resize(bgr_image.astype(np.float32), (96, 128), interpolation=cv2.INTER_LINEAR) / 255.0
    assert original == bgr_image.shape[:2]
    assert batch.shape == (1, 3, 128, 96) and batch.dtype.is_floating_point
    np.testing.assert_array_equal(batch[0].numpy(), expected.transpose(2, 0, 1))


def test_gray_and_bgra_become_bgr(bgr_image):
    gray = bgr_image[:, :, 0]
    np.testing.assert_array_equal(to_bgr8(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_bgr8(gray[:, :, None]), to_bgr8(gray))
    bgra = np.concatenate([bgr_image, np.full(bgr_image.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_bgr8(bgra), bgr_image)


def test_16bit_percentile_normalisation():
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 5000, (50, 60)).astype(np.uint16)
    low, high = np.percentile(image, (1.0, 99.8))
    expected = np.clip(np.rint((image.astype(np.float32) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(to_uint8(image), expected)
    converted = to_uint8(image, Normalization("minmax"))
    assert converted.min() == 0 and converted.max() == 255


def test_8bit_unchanged_unless_asked():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    assert to_uint8(image) is image
    assert to_uint8(image, Normalization("percentile")).max() == 255


def test_float_and_constant_images():
    image = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    out = to_uint8(image, Normalization("minmax"))
    assert out[0, 0] == 0 and out[-1, -1] == 255
    assert not to_uint8(np.full((8, 8), 700, np.uint16)).any()


@pytest.mark.parametrize("image, match", [
    (np.zeros((0, 10), np.uint8), "empty"),
    (np.zeros((10, 0, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 5), np.uint8), "5 channels"),
    (np.zeros((2, 4, 4, 3), np.uint8), r"shape \(2, 4, 4, 3\)"),
    (np.full((4, 4), np.nan, np.float32), "16 NaN/inf"),
    (np.zeros((4, 4), bool), "dtype bool"),
    (np.zeros((4, 4), np.complex64), "dtype complex64"),
])
def test_bad_images_are_rejected_with_the_reason(image, match):
    with pytest.raises(ValueError, match=match):
        to_bgr8(image)


def test_bad_normalisation_options():
    with pytest.raises(ValueError, match="normalize='zscore'"):
        Normalization("zscore")
    with pytest.raises(ValueError, match="percentiles"):
        Normalization("auto", (99.0, 1.0))
