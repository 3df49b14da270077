"""Zoom (`ancis_fast.zoom`): the crowding rule, mask resampling, and the Predictor's
zoomed path, including the bundled model on a crowded image of small nuclei."""
import numpy as np
import pytest
import cv2

import ancis_fast.predictor as predictor_module
from ancis_fast import Predictor
from ancis_fast.cli import make_parser
from ancis_fast.data.synthetic import SynthConfig, generate
from ancis_fast.evaluate import Evaluator
from ancis_fast.instances import Instances
from ancis_fast.masks import PatchMasks
from ancis_fast.predictor import PredictorConfig
from ancis_fast.zoom import (AUTO_MIN_CELLS, AUTO_ZOOM, BEST_DIAMETER, auto_scale, auto_zoom, check_zoom, median_diameter,
                             median_spacing, zoomed_size)
from conftest import blob_image, matched_detections, random_models

pytestmark = pytest.mark.auto_zoom


def grid_boxes(rows, cols, spacing, size=6.0, offset=20.0):
    """``rows x cols`` boxes of side ``size`` whose centres are ``spacing`` px apart."""
    cy, cx = np.meshgrid(offset + spacing * np.arange(rows), offset + spacing * np.arange(cols), indexing="ij")
    centres = np.stack([cy.ravel(), cx.ravel()], 1)
    return np.concatenate([centres - size / 2, centres + size / 2], 1)


def test_check_zoom_accepts_auto_and_factors_and_names_bad_values():
    assert check_zoom("auto") == "auto"
    assert check_zoom(1) == 1.0 and check_zoom("2.5") == 2.5
    for bad in (0.5, 5, "big", True, None):
        with pytest.raises(ValueError, match="zoom="):
            check_zoom(bad)
    with pytest.raises(ValueError, match="zoom="):
        PredictorConfig(zoom=0.9)


def test_median_spacing_hand_computed():
    # rows 10 px apart, columns 7 px apart: every point's nearest neighbour is 7 px away
    centres = (grid_boxes(4, 5, 1.0)[:, :2] + 3) * np.array([10.0, 7.0])
    assert median_spacing(centres) == pytest.approx(7.0)
    assert median_spacing(centres, chunk=3) == pytest.approx(7.0)  # chunking changes nothing
    assert median_spacing(np.array([[0.0, 0.0], [3.0, 4.0], [100.0, 100.0]])) == pytest.approx(5.0)
    assert median_spacing(np.zeros((1, 2))) == float("inf")


def test_auto_zoom_needs_a_crowd_measured_in_network_pixels():
    crowded, sparse = grid_boxes(10, 10, 12.0), grid_boxes(10, 10, 20.0)
    assert auto_zoom(crowded, (512, 512), (512, 512)) == AUTO_ZOOM
    assert auto_zoom(sparse, (512, 512), (512, 512)) == 1.0
    few = grid_boxes(7, 7, 8.0)
    assert len(few) < AUTO_MIN_CELLS and auto_zoom(few, (512, 512), (512, 512)) == 1.0
    # 24 px apart in a 1024 px image are 12 px apart at the 512 input: a crowd; in a
    # 256 px image 12 px become 24 px at the input: not a crowd
    assert auto_zoom(grid_boxes(10, 10, 24.0), (1024, 1024), (512, 512)) == AUTO_ZOOM
    assert auto_zoom(crowded, (256, 256), (512, 512)) == 1.0


def test_median_diameter_hand_computed():
    # areas of disks of diameter 10, 20 and 40 px: the median diameter is 20
    areas = np.pi / 4 * np.array([10.0, 40.0, 20.0, 0.0]) ** 2  # an empty mask does not count
    assert median_diameter(areas) == pytest.approx(20.0)
    assert median_diameter(np.zeros(0)) == 0.0


def disk_areas(diameter, count=9):
    return np.full(count, np.pi / 4 * diameter**2)


def test_auto_scale_brings_back_shrunk_nuclei_and_shrinks_large_ones():
    # 19 px nuclei of a 1024 image: the plain resize halves them to 9.5 px (more than 2x under
    # 36), so the image is segmented again at native resolution (scale 1, not 36 / 19)
    assert auto_scale(disk_areas(19.0), (1024, 1024), (512, 512)) == 1.0
    # 100 px nuclei of a 512 image: shrunk to 36 px (scale 0.36)
    assert auto_scale(disk_areas(100.0), (512, 512), (512, 512)) == pytest.approx(0.36)
    # never enlarged beyond native resolution: small nuclei of a 512 image are left to the
    # crowding rule, and so are those of a 600 image (1.0 changes its plain 0.85 too little)
    assert auto_scale(disk_areas(8.0), (512, 512), (512, 512)) is None
    assert auto_scale(disk_areas(8.0), (600, 600), (512, 512)) is None
    # within the band of the best size: nothing to do
    assert auto_scale(disk_areas(BEST_DIAMETER), (512, 512), (512, 512)) is None
    assert auto_scale(disk_areas(60.0), (512, 512), (512, 512)) is None
    # priors of a 512 input at a 256 input: best is still 36 px (80 px nuclei: 0.45)
    assert auto_scale(disk_areas(80.0), (256, 256), (256, 256), prior_height=512) == pytest.approx(0.45)
    assert auto_scale(disk_areas(80.0), (256, 256), (256, 256)) == pytest.approx(0.225)
    # nothing found, or a size out of range: keep the first pass
    assert auto_scale(np.zeros(0), (512, 512), (512, 512)) is None
    assert auto_scale(disk_areas(2.0), (2048, 2048), (512, 512)) is None


def test_zoomed_size_of_auto_is_covered_by_two_by_two_tiles():
    from ancis_fast.tiling import tile_starts

    height, width = zoomed_size((512, 512), AUTO_ZOOM)
    assert (height, width) == (960, 960) and tile_starts(height, 512, 64) == [0, 448]


def test_patch_masks_resized_hand_computed():
    block = np.zeros((1, 8, 8), bool)
    block[0, 2:4, 2:4] = True  # a 2x2 block halves to one pixel
    expected = np.zeros((4, 4), bool)
    expected[1, 1] = True
    np.testing.assert_array_equal(PatchMasks.from_dense(block).resized((4, 4)).dense()[0], expected)
    dot = np.zeros((1, 4, 4), bool)
    dot[0, 1, 1] = True  # one pixel doubles to a 2x2 block
    doubled = PatchMasks.from_dense(dot).resized((8, 8))
    np.testing.assert_array_equal(doubled.dense()[0], np.kron(dot[0], np.ones((2, 2), bool)))
    empty = PatchMasks.from_dense(np.zeros((1, 8, 8), bool)).resized((4, 4))
    assert empty.areas.tolist() == [0] and empty.image_size == (4, 4)


def test_patch_masks_halved_like_opencv_area_resampling():
    canvas = np.zeros((200, 300), np.uint8)
    cv2.ellipse(canvas, (150, 100), (40, 25), 30, 0, 360, 1, -1)
    cv2.circle(canvas, (290, 190), 9, 1, -1)  # at the border
    masks = PatchMasks.from_dense(np.stack([canvas == 1, np.zeros_like(canvas, bool)]))
    halved = masks.resized((100, 150)).dense()[0]
    expected = cv2.resize(canvas.astype(np.float32), (150, 100), interpolation=cv2.INTER_AREA) >= 0.5
    np.testing.assert_array_equal(halved, expected)


def test_instances_resized_scales_boxes_and_keeps_scores():
    dense = np.zeros((2, 100, 60), bool)
    dense[0, 10:20, 10:30] = True
    dense[1, 50:90, 0:60] = True
    found = Instances(np.array([[10, 10, 20, 30], [50, 0, 90, 60]], np.float32), np.array([0.9, 0.5]), dense,
                      np.array([1, 1]))
    found.meta["frame_index"] = 3
    big = found.resized((200, 120))
    np.testing.assert_allclose(big.boxes, found.boxes * 2)
    np.testing.assert_array_equal(big.scores, found.scores)
    np.testing.assert_array_equal(big.areas, found.areas * 4)
    assert big.image_size == (200, 120) and big.meta == {"frame_index": 3}


@pytest.fixture(scope="module")
def small_models():
    return random_models("resnet18", mask_bias=2.0)


def small_predictor(models, zoom):
    return Predictor.from_models(*models, backend="eager",
                                 config=PredictorConfig(input_size=(128, 128), zoom=zoom, max_detections=40))


def test_fixed_zoom_maps_cells_back_to_the_original_image(small_models):
    image = blob_image(seed=4)
    found = small_predictor(small_models, 2.0).predict(image)
    assert found.meta["zoom"] == 2.0 and found.image_size == image.shape[:2]
    assert len(found) <= 40  # max_detections holds for the image, not per tile
    assert (found.boxes >= -1).all() and (found.boxes[:, 2] <= image.shape[0] + 1).all()
    assert (found.boxes[:, 3] <= image.shape[1] + 1).all()
    assert np.all(np.diff(found.scores) <= 0)
    assert small_predictor(small_models, 1.0).predict(image).meta["zoom"] == 1.0


def test_predict_batch_zooms_the_images_predict_zooms(small_models, monkeypatch):
    """predict_batch segments the uncrowded images of a batch together and zooms the
    others exactly as predict does (the rule is patched to pick images by size)."""
    monkeypatch.setattr(predictor_module, "auto_zoom", lambda boxes, size, _: 2.0 if size == (160, 200) else 1.0)
    monkeypatch.setattr(predictor_module, "auto_scale", lambda *args: None)
    images = [blob_image(seed=5), blob_image(seed=6)[:120, :150]]
    predictor = small_predictor(small_models, "auto")
    batch = predictor.predict_batch(images, batch_size=2)
    for image, together in zip(images, batch):
        alone = predictor.predict(image)
        assert together.meta["zoom"] == alone.meta["zoom"]
        matched_detections(together, alone, atol=1e-4)
    assert [r.meta["zoom"] for r in batch] == [2.0, 1.0]


def test_cli_zoom_option():
    args = make_parser().parse_args(["predict", "x.png", "--out", "o", "--zoom", "2"])
    assert args.zoom == 2.0
    assert make_parser().parse_args(["predict", "x.png", "--out", "o"]).zoom == "auto"
    with pytest.raises(SystemExit):
        make_parser().parse_args(["predict", "x.png", "--out", "o", "--zoom", "9"])


@pytest.fixture(scope="module")
def bundled():
    return Predictor(backend="eager")


def test_bundled_model_zooms_a_crowd_of_small_nuclei_and_finds_more(bundled):
    """~800 nuclei of 8-9 px on 512 px: measured recall 0.91 at zoom 1, 0.96 with auto."""
    sample = generate(0, SynthConfig(size=(512, 512), diameter=(8, 9), count=(800, 900), p_colour=0,
                                     p_brightfield=0, p_16bit=0))
    stats = {}
    for zoom in (1.0, "auto"):
        predictor = Predictor.from_models(bundled.detector, bundled.segmenter, backend="eager",
                                          config=PredictorConfig(zoom=zoom))
        found = predictor.predict(sample.image)
        stats[zoom] = (found.meta["zoom"], Evaluator().add_masks(found.masks, found.scores, sample.labels).stats)
    assert stats["auto"][0] == AUTO_ZOOM and stats[1.0][0] == 1.0
    assert stats["auto"][1].recall >= max(stats[1.0][1].recall + 0.03, 0.93), stats
    assert stats["auto"][1].precision >= stats[1.0][1].precision - 0.01, stats


def test_bundled_model_does_not_zoom_the_real_image(bundled):
    from ancis_fast.io.readers import read_image
    from test_default_model import ASSETS

    image = read_image(ASSETS / "dsb2018_nuclei.png")
    auto = bundled.predict(image)
    plain = Predictor.from_models(bundled.detector, bundled.segmenter, backend="eager",
                                  config=PredictorConfig(zoom=1)).predict(image)
    assert auto.meta["zoom"] == 1.0
    np.testing.assert_array_equal(auto.boxes, plain.boxes)


def test_check_diameter_and_its_conflicts():
    from ancis_fast.zoom import BEST_DIAMETER, MAX_SCALE, MIN_SCALE, check_diameter, diameter_scale

    assert check_diameter(None) is None and check_diameter(20) == 20.0
    assert diameter_scale(BEST_DIAMETER / 2) == 2.0 and diameter_scale(BEST_DIAMETER, prior_height=256) == 0.5
    # a 500 px image scaled by 1.1 (550 px) fits the 512 input instead of taking 2 x 2 tiles
    assert diameter_scale(BEST_DIAMETER / 1.1, 512, (500, 400), (512, 512)) == pytest.approx(512 / 500)
    assert diameter_scale(BEST_DIAMETER / 1.2, 512, (500, 400), (512, 512)) == pytest.approx(1.2)
    for bad in (0, -5, BEST_DIAMETER / MAX_SCALE / 2, BEST_DIAMETER / MIN_SCALE * 2, "20", True):
        with pytest.raises(ValueError, match="diameter="):
            check_diameter(bad)
    with pytest.raises(ValueError, match="give one"):
        PredictorConfig(zoom=2, diameter=20)
    args = make_parser().parse_args(["predict", "x.png", "--out", "o", "--diameter", "30", "--min-size", "12"])
    assert (args.diameter, args.min_size) == (30.0, 12)


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_diameter_scales_the_image_and_segments_it_in_input_size_tiles(small_models, monkeypatch, scale):
    """With a diameter the image is resized by diameter_scale (both axes alike, enlarged or
    shrunk), cut into input-size tiles (padded when smaller), and the cells mapped back."""
    from ancis_fast.pipeline.preprocess import to_uint8
    from ancis_fast.tiling import tile_windows
    from ancis_fast.zoom import diameter_scale

    from test_tiling import components

    image = blob_image(seed=4)  # 160 x 200
    from ancis_fast.zoom import BEST_DIAMETER

    config = PredictorConfig(input_size=(128, 128), diameter=BEST_DIAMETER / 4 / scale)  # a 128 input's priors
    predictor = Predictor.from_models(*small_models, backend="eager", config=config)
    assert diameter_scale(config.diameter, 128) == scale
    bright = lambda tile: components(np.where(tile[..., 0] > 70, tile[..., 0], 0))  # noqa: E731  the disks
    seen = []
    monkeypatch.setattr(predictor, "_segment_views", lambda views, crops: [seen.append(c.shape) or bright(c) for c in crops])
    found = predictor.predict(image)
    size = (round(160 * scale), round(200 * scale))
    assert seen == [(128, 128, 3)] * len(tile_windows(*size, 128, 64))
    assert found.meta["scale"] == scale and found.image_size == (160, 200)
    resized = cv2.resize(to_uint8(image, config.normalization), size[::-1],
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    expected = bright(resized).resized((160, 200))
    assert len(found) == len(expected) > 5
    iou = (found.label_image() > 0) & (expected.label_image() > 0)
    assert iou.sum() >= 0.9 * (expected.label_image() > 0).sum()
    with pytest.raises(ValueError, match="give one"):
        predictor.predict(image, tile=128)


def test_diameter_of_the_real_image_keeps_its_nuclei(bundled):
    """The real image's nuclei measure 23.7 px (median equivalent diameter of its truth):
    given that, the image is enlarged 1.52x and segmented in 4 input-size tiles, whose cells
    are mapped back to the image. It finds them as well as the default's one plain resize
    (bundled weights of 2026-12-06, eager: AP@0.5 0.799 -> 0.807, F1 0.890 -> 0.877); a wrong
    scale or mapping loses most of them."""
    from ancis_fast.io.readers import read_image
    from test_default_model import ASSETS

    image = read_image(ASSETS / "dsb2018_nuclei.png")
    truth = read_image(ASSETS / "dsb2018_nuclei_labels.png")
    sized = Predictor.from_models(bundled.detector, bundled.segmenter, backend="eager",
                                  config=PredictorConfig(diameter=23.7))
    scores = {}
    for name, predictor in (("default", bundled), ("diameter", sized)):
        found = predictor.predict(image)
        evaluator = Evaluator()
        evaluator.add_masks(found.masks, found.scores, truth)
        scores[name] = evaluator.summary()
    assert scores["diameter"]["ap50"] >= scores["default"]["ap50"], scores
    assert scores["diameter"]["f1"] >= scores["default"]["f1"] - 0.03, scores
