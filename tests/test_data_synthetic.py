"""Synthetic generator: determinism, variety and value ranges."""
import numpy as np
import pytest

from ancis_fast.data.sample import boxes_from_labels, instance_ids
from ancis_fast.data.synthetic import SynthConfig, generate

CONFIG = SynthConfig(size=(128, 160))


@pytest.fixture(scope="module")
def samples():
    return [generate((7, i), CONFIG) for i in range(40)]


def test_same_seed_same_sample_different_seed_different_sample():
    a, b, c = generate((3, 1), CONFIG), generate((3, 1), CONFIG), generate((3, 2), CONFIG)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.name == b.name
    assert not np.array_equal(a.labels, c.labels)
    assert generate(5, CONFIG).name == "synth_000005"


def test_shapes_dtypes_and_labels(samples):
    for s in samples:
        assert s.labels.shape == (128, 160) and s.labels.dtype == np.int32
        assert s.image.shape[:2] == (128, 160)
        assert s.image.dtype in (np.uint8, np.uint16)
        assert s.image.ndim == 2 or s.image.shape[2] == 3
        ids = instance_ids(s.labels)
        assert ids.tolist() == list(range(1, len(ids) + 1))  # sequential ids


def test_variety_of_outputs(samples):
    kinds = {(s.image.dtype.name, s.image.ndim) for s in samples}
    assert ("uint16", 2) in kinds and ("uint8", 2) in kinds and ("uint8", 3) in kinds
    counts = [int(s.labels.max()) for s in samples]
    assert min(counts) < 15 and max(counts) > 100
    sizes = [np.sqrt(np.median(np.bincount(s.labels.ravel())[1:])) for s in samples if s.labels.max() > 0]
    assert min(sizes) < 8 and max(sizes) > 25  # typical nucleus side varies widely
    assert all(s.image.max() > s.image.min() for s in samples)


def test_nuclei_are_brighter_than_background_in_gray_fluorescence(samples):
    checked = 0
    for s in samples:
        if s.image.ndim == 2 and s.image.dtype == np.uint8 and s.labels.max() > 0 and s.image.mean() < 128:
            inside = s.image[s.labels > 0].astype(float).mean()
            outside = s.image[s.labels == 0].astype(float).mean()
            assert inside > outside
            checked += 1
    assert checked >= 3


def test_dense_requests_give_many_touching_cells():
    s = generate(11, SynthConfig(size=(256, 256), diameter=(8, 9), count=(800, 800)))
    assert s.labels.max() > 300
    boxes, _ = boxes_from_labels(s.labels)
    assert len(boxes) > 300
    touching = (s.labels[:, :-1] != s.labels[:, 1:]) & (s.labels[:, :-1] > 0) & (s.labels[:, 1:] > 0)
    assert touching.sum() > 50


def _edge_levels(sample):
    """Gray fluorescence: stain level just inside and just outside the labelled edges, as
    a share of the nuclei's core level above background."""
    import cv2

    image, foreground = sample.image.astype(np.float32), (sample.labels > 0).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    background = np.median(image[cv2.dilate(foreground, np.ones((7, 7), np.uint8)) == 0])
    core = np.median(image[cv2.erode(foreground, np.ones((5, 5), np.uint8)) > 0]) - background
    inside = np.median(image[(foreground > 0) & (cv2.erode(foreground, kernel) == 0)]) - background
    outside = np.median(image[(cv2.dilate(foreground, kernel) > 0) & (foreground == 0)]) - background
    return inside / core, outside / core


GRAY = dict(size=(192, 192), diameter=(18, 24), count=(20, 40), p_16bit=0.0, p_colour=0.0, p_brightfield=0.0)


def test_blur_softens_the_edges_and_edge_floor_raises_the_labelled_edge():
    seeds = range(8)
    sharp = [generate(seed, SynthConfig(blur=(0.3, 0.3), **GRAY)) for seed in seeds]
    soft = [generate(seed, SynthConfig(blur=(3.0, 3.0), **GRAY)) for seed in seeds]
    floored = [generate(seed, SynthConfig(blur=(0.3, 0.3), edge_floor=(0.7, 0.7), **GRAY)) for seed in seeds]
    for a, b, c in zip(sharp, soft, floored):  # both change the stain, never the labels
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.labels, c.labels)
    sharp_levels, soft_levels, floored_levels = (np.median([_edge_levels(s) for s in group], axis=0)
                                                 for group in (sharp, soft, floored))
    assert soft_levels[1] > sharp_levels[1] + 0.1  # more stain just outside the label
    assert floored_levels[0] > sharp_levels[0] + 0.1  # more stain just inside it


def test_default_blur_and_edge_floor_leave_the_images_as_they_were():
    """The options draw no random numbers unless used: seeded datasets keep their images."""
    plain = generate(3, SynthConfig(**GRAY))
    spelled_out = generate(3, SynthConfig(blur=(0.3, 1.3), edge_floor=(0.0, 0.0), **GRAY))
    np.testing.assert_array_equal(plain.image, spelled_out.image)
    assert not np.array_equal(plain.image, generate(3, SynthConfig(edge_floor=(0.5, 0.5), **GRAY)).image)


def test_bad_config_is_reported():
    with pytest.raises(ValueError, match="diameter"):
        SynthConfig(diameter=(10, 5))
    with pytest.raises(ValueError, match="p_colour"):
        SynthConfig(p_colour=0.8, p_brightfield=0.5)
    with pytest.raises(ValueError, match="blur"):
        SynthConfig(blur=(2.0, 1.0))
    with pytest.raises(ValueError, match="edge_floor"):
        SynthConfig(edge_floor=(0.5, 1.5))
    with pytest.raises(ValueError, match="seed"):
        generate(-1)
