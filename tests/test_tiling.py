"""Tiled prediction: a mosaic whose per-tile truth is known (connected components)."""
import cv2
import numpy as np
import pytest

from ancis_fast import Instances
from ancis_fast.masks import PatchMasks
from ancis_fast.tiling import predict_tiled, tile_starts


def components(image: np.ndarray) -> Instances:
    """Stand-in segmenter with an exact answer: each connected bright blob is a cell."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((image > 0).astype(np.uint8), connectivity=8)
    patches, origins, boxes, scores = [], [], [], []
    for k in range(1, count):
        x, y, w, h, _ = stats[k]
        patches.append(labels[y : y + h, x : x + w] == k)
        origins.append((y, x))
        boxes.append((y, x, y + h, x + w))
        scores.append(float(image[labels == k].mean()) / 255)
    order = np.argsort(-np.array(scores), kind="stable")
    masks = PatchMasks([patches[i] for i in order], np.array(origins).reshape(-1, 2)[order], image.shape)
    return Instances(np.array(boxes, np.float32).reshape(-1, 4)[order], np.array(scores)[order], masks)


def disks_image(height, width, seed, extra_centres=()):
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.uint8)
    centres = list(extra_centres)
    while len(centres) < 60:
        centres.append((rng.integers(0, height), rng.integers(0, width)))
    for cy, cx in centres:
        radius = int(rng.integers(4, 14))
        probe = np.zeros_like(image)
        cv2.circle(probe, (int(cx), int(cy)), radius + 2, 1, -1)
        if (image[probe > 0] > 0).any():  # keep disks apart so that components are cells
            continue
        cv2.circle(image, (int(cx), int(cy)), radius, int(rng.integers(60, 255)), -1)
    return image


def test_tile_starts_cover_the_axis():
    assert tile_starts(100, 256, 64) == [0]
    assert tile_starts(700, 256, 64) == [0, 192, 384, 444]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(700, 64, 64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stitched_result_equals_whole_image_truth(seed):
    # disks placed right on seams (x/y = 224 and 416 are seams of tile 256 / overlap 64)
    on_seams = [(224, 100), (300, 224), (416, 416), (224, 224), (600, 416)]
    image = disks_image(700, 900, seed, on_seams)
    truth = components(image)
    tiled = predict_tiled(image, components, tile=256, overlap=64)
    assert len(tiled) == len(truth)
    truth_labels, tiled_labels = truth.label_image(), tiled.label_image()
    assert ((truth_labels > 0) == (tiled_labels > 0)).all()
    # same partition: every tiled cell is exactly one true cell
    pairs = set(zip(truth_labels[truth_labels > 0].tolist(), tiled_labels[truth_labels > 0].tolist()))
    assert len(pairs) == len(truth)
    np.testing.assert_allclose(np.sort(tiled.scores), np.sort(truth.scores), rtol=1e-6)


def test_tiling_keeps_memory_in_patches():
    image = disks_image(1500, 1500, 3)
    tiled = predict_tiled(image, components, tile=512, overlap=64)
    assert sum(p.size for p in tiled.mask_patches.patches) < 60 * 30 * 30


@pytest.mark.parametrize("zoom", [1.0, 2.0])
def test_predictor_tiles_are_normalised_with_their_whole_image(monkeypatch, zoom):
    """A 16-bit image whose tiles differ in brightness: every tile (explicit tiling at zoom
    1, the enlarged image's tiles at zoom 2) is cut from the image converted to 8-bit as a
    whole, so one cell reads the same on every tile."""
    from ancis_fast import Predictor
    from ancis_fast.pipeline.preprocess import to_uint8
    from ancis_fast.predictor import PredictorConfig
    from conftest import random_models

    image = (disks_image(200, 260, seed=3).astype(np.uint16) * 40 + 100)
    image[:, 130:] += 3000  # the right half is much brighter
    predictor = Predictor.from_models(*random_models("resnet18"), backend="eager",
                                      config=PredictorConfig(input_size=(128, 128), zoom=zoom))
    seen = []
    monkeypatch.setattr(predictor, "_predict_uint8", lambda tile: seen.append(tile) or components(tile))
    predictor.predict(image, tile=128 if zoom == 1.0 else None, overlap=32)
    whole = to_uint8(image, predictor.config.normalization)
    if zoom != 1.0:
        whole = cv2.resize(whole, (256, 256), interpolation=cv2.INTER_LINEAR)
    starts_y, starts_x = tile_starts(whole.shape[0], 128, 32), tile_starts(whole.shape[1], 128, 32)
    expected = [whole[y : y + 128, x : x + 128] for y in starts_y for x in starts_x]
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)


def test_a_cell_two_tiles_place_either_side_of_the_keeping_margin_is_kept_once():
    """Tiles 0 and 1 (tile 256, overlap 64: seam at x = 224) both see one cell; its centre is
    x = 227.95 in tile 0's estimate (kept: < 224 + SEAM_MARGIN) and 228.0 in tile 1's (kept:
    >= 224 - SEAM_MARGIN, but 4 px inside tile 1's own region): one instance, not two."""
    def tile_cell(tile):
        x0 = 0 if tile[0, 0] == 0 else 192  # the two tiles' contents are marked by their first pixel
        left = 218.0 - x0 + (0.0 if x0 else -0.05)
        patch = np.ones((20, 20), bool)
        return Instances(np.array([[100, left, 120, left + 20]], np.float32), np.array([0.9]),
                         PatchMasks([patch], np.array([[100, int(218 - x0)]]), tile.shape[:2]))

    image = np.zeros((256, 448), np.uint8)
    image[0, 192] = 1
    stitched = predict_tiled(image, tile_cell, tile=256, overlap=64)
    assert len(stitched) == 1
