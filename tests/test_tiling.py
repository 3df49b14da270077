"""Tiled prediction: a mosaic whose per-tile truth is known (connected components)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

import ancis_fast.predictor as predictor_module
from ancis_fast import Instances
from ancis_fast.evaluate import mask_iou
from ancis_fast.masks import PatchMasks
from ancis_fast.tiling import predict_tiled, tile_starts
from conftest import DSB2018, needs_dsb2018


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


class RecordingBar:
    """Stands in for tqdm: counts updates."""

    def __init__(self, total):
        self.total, self.n, self.closed = total, 0, False

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True


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
    seen, bars = [], []
    monkeypatch.setattr(predictor, "_segment_views", lambda views, crops: [seen.append(c) or components(c) for c in crops])
    monkeypatch.setattr(predictor_module, "tqdm", lambda total, **_: bars.append(RecordingBar(total)) or bars[-1])
    predictor.predict(image, tile=128 if zoom == 1.0 else None, overlap=32, progress=True)
    whole = to_uint8(image, predictor.config.normalization)
    if zoom != 1.0:
        whole = cv2.resize(whole, (256, 256), interpolation=cv2.INTER_LINEAR)
    starts_y, starts_x = tile_starts(whole.shape[0], 128, 32), tile_starts(whole.shape[1], 128, 32)
    expected = [whole[y : y + 128, x : x + 128] for y in starts_y for x in starts_x]
    assert len(seen) == len(expected)
    assert [(bar.total, bar.n, bar.closed) for bar in bars] == [(len(expected), len(expected), True)]
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)


def test_a_cell_two_tiles_place_either_side_of_the_keeping_margin_is_kept_once():
    """Tiles 0 and 1 (tile 256, overlap 64: both hold x 192-256) see one cell whole, with box
    estimates 0.05 px apart either side of the middle of the overlap (x = 224, where a rule by
    box centre would keep it twice): one instance, not two."""
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


def squares(tile_shape, cells):
    """Instances of square masks ``(score, y, x, side)`` in tile pixels, by descending score."""
    cells = sorted(cells, key=lambda c: -c[0])
    boxes = np.array([(y, x, y + side, x + side) for _, y, x, side in cells], np.float32).reshape(-1, 4)
    masks = PatchMasks([np.ones((side, side), bool) for *_, side in cells],
                       np.array([(y, x) for _, y, x, _ in cells]).reshape(-1, 2), tile_shape)
    return Instances(boxes, np.array([c[0] for c in cells]), masks)


def test_masks_overlapping_by_more_than_the_duplicate_iou_are_one_cell():
    """Tiles [0, 256) and [192, 448) (overlap 64). Within tile 0, two detections whose masks
    overlap by IoU 0.47 (the model's box NMS can leave such a pair) keep only the higher
    score; two overlapping by IoU 0.14 are both kept. Across the tiles, one cell seen as a
    20 px square by tile 0 (margin 21 px to its inner edge) and as a 30 px square around it by
    tile 1 (margin 18 px) overlap by IoU 0.44 but cover only 44 % of the larger: one cell,
    from the tile where it lies farther from the edge."""
    def segment(tile):
        if tile[0, 0] == 0:  # tile 0 (tile 1 is marked by its first pixel)
            return squares(tile.shape, [(0.9, 20, 20, 20), (0.8, 24, 24, 20), (0.7, 100, 100, 20),
                                        (0.6, 110, 110, 20), (0.5, 150, 215, 20)])
        return squares(tile.shape, [(0.95, 145, 210 - 192, 30)])

    image = np.zeros((256, 448), np.uint8)
    image[0, 192] = 1
    stitched = predict_tiled(image, segment, tile=256, overlap=64)
    assert sorted(map(tuple, stitched.boxes.astype(int).tolist())) == [
        (20, 20, 40, 40), (100, 100, 120, 120), (110, 110, 130, 130), (150, 215, 170, 235)]
    ious = mask_iou(stitched.masks, stitched.masks)
    assert (ious[~np.eye(len(stitched), dtype=bool)] <= 0.3).all()


def test_progress_is_reported_once_per_tile():
    image = disks_image(700, 900, 5)
    calls = []
    predict_tiled(image, components, tile=256, overlap=64, on_tile=lambda done, total: calls.append((done, total)))
    total = len(tile_starts(700, 256, 64)) * len(tile_starts(900, 256, 64))
    assert calls == [(k, total) for k in range(1, total + 1)]


def test_image_smaller_than_a_tile_is_padded_to_native_resolution():
    """An image narrower than the tile reaches the segmenter padded to ``tile x tile``
    (not stretched), and its cells come back clipped to the image."""
    image = disks_image(100, 300, 6)
    image[40:60, 290:] = 200  # a cell cut by the image's right edge
    seen = []
    tiled = predict_tiled(image, lambda t: seen.append(t.shape) or components(t), tile=256, overlap=64)
    assert seen == [(256, 256), (256, 256)]
    truth = components(image)
    assert len(tiled) == len(truth) and tiled.image_size == (100, 300)
    np.testing.assert_array_equal(tiled.label_image() > 0, truth.label_image() > 0)


def test_a_cell_cut_by_one_tile_comes_whole_from_the_other():
    """A stand-in segmenter that also reports the cut part of a cell at a tile edge (as a
    network does): the stitched cell is the whole one, once, wherever the seam falls."""
    for x in range(170, 250, 7):  # tile 256 / overlap 96: tiles [0, 256) and [160, 416)
        image = np.zeros((200, 416), np.uint8)
        cv2.circle(image, (x, 100), 20, 200, -1)
        tiled = predict_tiled(image, components, tile=256, overlap=96)
        assert len(tiled) == 1 and tiled.areas[0] == (image > 0).sum(), x


def test_a_cell_wider_than_the_overlap_is_joined_from_its_parts():
    """No tile holds a 120 px cell with a 64 px overlap: the parts the two tiles see are
    joined into one cell."""
    image = np.zeros((200, 448), np.uint8)
    cv2.ellipse(image, (224, 100), (60, 30), 0, 0, 360, 200, -1)  # tiles [0, 256) and [192, 448)
    tiled = predict_tiled(image, components, tile=256, overlap=64)
    assert len(tiled) == 1 and tiled.areas[0] == (image > 0).sum()


def test_seams_at_other_places_give_the_same_cells():
    """The shift test with a segmenter whose answer does not depend on where the tile
    lies (connected components): the same image, shifted by 160 px so the seams fall
    elsewhere, gives exactly the same cells, including cells wider than the overlap
    (the previous stitching, by box centre, cut those: mean IoU 0.948, 7 % of cells below 0.8)."""
    rng = np.random.default_rng(7)
    image = np.zeros((900, 900), np.uint8)
    for _ in range(40):
        cy, cx, ry, rx = rng.integers(60, 840), rng.integers(60, 840), rng.integers(8, 50), rng.integers(8, 50)
        probe = np.zeros_like(image)
        cv2.ellipse(probe, (int(cx), int(cy)), (int(rx) + 3, int(ry) + 3), 0, 0, 360, 1, -1)
        if not (image[probe > 0] > 0).any():
            cv2.ellipse(image, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, int(rng.integers(60, 255)), -1)
    shifted = np.pad(image, ((160, 0), (160, 0)))
    first = predict_tiled(image, components, tile=256, overlap=64).label_image()
    second = predict_tiled(shifted, components, tile=256, overlap=64).label_image()[160:, 160:]
    ious = mask_iou(first, second)
    best = np.concatenate([ious.max(axis=1), ious.max(axis=0)])
    assert len(best) > 2 * 25 and best.min() == 1.0
    np.testing.assert_array_equal(first > 0, image > 0)


def _tile_size_harness():
    """``benchmarks/tile_size.py`` as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tile_size.py"
    spec = importlib.util.spec_from_file_location("tile_size_benchmark", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return harness


def test_the_shift_harness_finds_the_seams_of_both_runs_and_the_cells_near_them():
    harness = _tile_size_harness()
    # 603 x 1272 in 1024 px tiles overlapping by 64: one row, tiles at x 0-1024 and 248-1272;
    # moved 256 px (859 x 1528): tiles at x 0-1024 and 504-1528, i.e. 248 and 768 unmoved
    rows, columns = harness.seam_lines(603, 1272, 1024)
    assert rows.tolist() == [] and columns.tolist() == [248, 1024]
    rows, columns = harness.seam_lines(603 + 256, 1272 + 256, 1024, shift=256)
    assert rows.tolist() == [] and columns.tolist() == [248, 768]
    labels = np.zeros((603, 1272), np.int32)
    labels[100:110, 300:311] = 1  # 52 px right of the seam at 248
    labels[100:110, 500:511] = 2  # 189 px from 248, 257 px from 768
    labels[300:310, 700:711] = 3  # 57 px left of 768
    seams = [harness.seam_lines(603, 1272, 1024), harness.seam_lines(859, 1528, 1024, shift=256)]
    assert harness.near_seams(labels, seams, 64).tolist() == [True, False, True]
    assert harness.near_seams(labels, seams, 50).tolist() == [False, False, False]


@pytest.mark.slow
@needs_dsb2018
def test_seams_do_not_change_the_cells_of_real_images():
    """The shift test with the default settings on real fluorescence images (no mosaic
    joins), as ``benchmarks/tile_size.py`` runs it: the five 603x1272 fluorescence images of
    the DSB 2018 training set, each in the default tiles (``Predictor()``, 1024 px at native
    resolution), and moved 256 px (a multiple of every stride of the network) so the seams
    fall elsewhere. Measured with the bundled weights of 2026-12-06 (round 2) over the five
    images' 2366 cells: mean best-match IoU 0.962, 2.7 % below 0.8. In 512 px tiles the same
    gives 0.838 and 21.1 %: the detector's self-attention spans its whole input, so a cell's score
    and mask depend on everything else in its tile, and moving the seams changes every
    tile's content; a 1024 px tile holds enough of each cell's surroundings (the whole 603 px
    height) that they seldom change its answer. Against the truth both tile sizes find the
    nuclei about as well (F1@0.5 0.746 and 0.747)."""
    from ancis_fast import Predictor
    from ancis_fast.io.readers import read_image

    harness = _tile_size_harness()
    paths = [next((DSB2018 / "images").glob(f"{name}*.png")) for name in harness.WIDE_FLUORESCENCE]
    images = [read_image(p) for p in paths]
    truths = [read_image(DSB2018 / "masks" / p.name).astype(np.int32) for p in paths]
    predictor = Predictor()
    row = harness.measure(predictor, images, truths, predictor.config.tile_size, 256)
    assert row["cells"] > 1500
    assert row["mean_iou"] >= 0.95 and row["below_0.8"] <= 0.03, row


def test_predictor_runs_tiles_in_batches_with_the_same_result(monkeypatch):
    """predict(tile=..., batch_size=4) sends the network 4 tiles at a time; the cells equal
    one tile at a time (CPU's default) up to float rounding of batched convolutions
    (measured: scores differ by at most 6e-8)."""
    from ancis_fast import Predictor
    from ancis_fast.predictor import PredictorConfig
    from conftest import blob_image, matched_detections, paired_mask_ious, random_models

    predictor = Predictor.from_models(*random_models("resnet18"), backend="eager", config=PredictorConfig(
        input_size=(128, 128), zoom=1.0, max_detections=60))
    image = blob_image(300, 380, cells=30, seed=3)
    single = predictor.predict(image, tile=128, overlap=32)
    run, batches = predictor._run, []
    monkeypatch.setattr(predictor, "_run", lambda batch, sizes, size: batches.append(batch.shape[0]) or run(batch, sizes, size))
    batched = predictor.predict(image, tile=128, overlap=32, batch_size=4)
    tiles = len(tile_starts(300, 128, 32)) * len(tile_starts(380, 128, 32))
    assert batches == [4] * (tiles // 4) + ([tiles % 4] if tiles % 4 else [])
    assert len(batched) == len(single) > 100
    matched = matched_detections(batched, single, atol=1e-5)  # near-tied scores may swap places
    ious = paired_mask_ious(batched, matched)
    assert ious.min() >= 0.9 and ious.mean() >= 0.995, (ious.min(), ious.mean())
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict(image, tile=128, batch_size=0)
