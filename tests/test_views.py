"""The views of an image (`ancis_fast.views`): the planner's windows against hand-computed
ones, merging against the tiled path, and the Predictor's one loop over mixed images."""
import numpy as np
import pytest
import torch

import ancis_fast.predictor as predictor_module
from ancis_fast import Predictor
from ancis_fast.pipeline.preprocess import Normalization, to_uint8
from ancis_fast.predictor import PredictorConfig
from ancis_fast.tiling import predict_tiled, stitch
from ancis_fast.views import SCALED, TILES, WHOLE, View, batches, plan_image, zoomed_plan
from ancis_fast.zoom import BEST_DIAMETER
from conftest import blob_image, matched_detections, random_models
from test_tiling import components, disks_image

CONFIG = PredictorConfig(input_size=(128, 128), zoom=1.0, max_detections=40)


def windows(plan):
    return [view.window for view in plan.views]


def grid(starts_y, starts_x, side, height, width):
    """Hand-written tile starts as windows, row by row, clipped to the image."""
    return [(y, x, min(y + side, height), min(x + side, width)) for y in starts_y for x in starts_x]


@pytest.mark.parametrize("zoom", [1.0, "auto"])
def test_a_small_image_is_one_whole_view(zoom):
    plan = plan_image(3, (160, 200), CONFIG.with_overrides(zoom=zoom))
    assert plan.kind == WHOLE and plan.image == 3 and plan.meta == {"zoom": 1.0}
    (view,) = plan.views
    assert view == View(3, (160, 200), (160, 200), (0, 0, 160, 200), None, (128, 128))
    assert view.whole and view.scale == (1.0, 1.0)
    image = blob_image(seed=1)
    assert view.cut(image) is image and plan.pixels(image, CONFIG.normalization) is image


def test_a_tiled_image_is_cut_into_native_windows():
    # tile 128 / overlap 32 over 300 x 380: starts 0, 96 and the last 300 - 128 = 172 down,
    # 0, 96, 192 and 380 - 128 = 252 across
    plan = plan_image(0, (300, 380), CONFIG, tile=128, overlap=32)
    assert plan.kind == TILES and plan.meta == {} and plan.scaled_size == (300, 380)
    assert windows(plan) == grid([0, 96, 172], [0, 96, 192, 252], 128, 300, 380)
    assert all(v.tile == 128 and v.input_size == (128, 128) and v.scale == (1.0, 1.0) for v in plan.views)
    # above auto_tile_above the tiles are tile_size square network inputs (here 256 over 64: starts 0,
    # 192, and the last 300 - 256 = 44), whatever the whole-image input size
    auto = plan_image(0, (100, 300), CONFIG.with_overrides(input_size=(128, 192), tile_size=256), auto_tile_above=200)
    assert auto.kind == TILES and windows(auto) == [(0, 0, 100, 256), (0, 44, 100, 300)]
    assert [(v.tile, v.input_size) for v in auto.views] == [(256, (256, 256))] * 2
    assert PredictorConfig().tile_size == 1024
    # a fixed zoom does not apply to a tiled image; a diameter does
    assert plan_image(0, (3000, 100), CONFIG.with_overrides(zoom=2.0)).kind == TILES
    assert plan_image(0, (3000, 100), CONFIG.with_overrides(zoom="auto", diameter=20.0)).kind == SCALED


def test_a_zoomed_image_is_cut_from_zoom_times_the_input():
    # zoom 2 of a 128 input: the image becomes 256 x 256, tiles 128 over 64 start at 0, 64, 128
    plan = plan_image(1, (160, 200), CONFIG.with_overrides(zoom=2.0), overlap=64)
    assert plan.kind == SCALED and plan.meta == {"zoom": 2.0} and plan.max_detections == 40
    assert plan.scaled_size == (256, 256) and windows(plan) == grid([0, 64, 128], [0, 64, 128], 128, 256, 256)
    assert plan.views[0].scale == (256 / 160, 256 / 200)
    assert zoomed_plan(1, (160, 200), 2.0, (128, 128), 64, 40) == plan  # the second round of "auto"


def test_a_diameter_scaled_image_is_cut_into_input_size_tiles():
    # nuclei of 4.5 px at a 128 input (priors of 128): scale 36 * 128 / 512 / 4.5 = 2, so
    # 160 x 200 becomes 320 x 400; tiles of 128 over 64 start at 0, 64, 128, 192 down and
    # 0, 64, ..., 256, 272 across
    config = CONFIG.with_overrides(zoom="auto", diameter=BEST_DIAMETER / 8)
    plan = plan_image(0, (160, 200), config, overlap=64)
    assert plan.kind == SCALED and plan.meta == {"scale": 2.0} and plan.scaled_size == (320, 400)
    assert windows(plan) == grid([0, 64, 128, 192], [0, 64, 128, 192, 256, 272], 128, 320, 400)
    assert plan.views[0].scale == (2.0, 2.0)
    with pytest.raises(ValueError, match="give one"):
        plan_image(0, (160, 200), config, tile=128)


def test_a_view_is_cut_and_padded_with_the_median():
    image = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    view = View(0, (5, 7), (5, 7), (1, 4, 5, 7), 6, (128, 128))
    expected = np.full((6, 6), np.median(image[1:5, 4:7]), np.uint8)
    expected[:4, :3] = image[1:5, 4:7]
    np.testing.assert_array_equal(view.cut(image), expected)


def test_scaled_pixels_are_the_8bit_image_resized():
    import cv2

    image = (blob_image(seed=2)[..., 0].astype(np.uint16) * 100)
    norm = Normalization("minmax")
    plan = plan_image(0, image.shape, CONFIG.with_overrides(zoom=2.0))
    expected = cv2.resize(to_uint8(image, norm), (256, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(plan.pixels(image, norm), expected)


def test_batches_hold_batch_size_views_of_one_input_size():
    small = [View(0, (9, 9), (9, 9), (0, 0, 9, 9), None, (128, 128))] * 5
    other = [View(1, (9, 9), (9, 9), (0, 0, 9, 9), None, (256, 256))] * 2
    assert [len(b) for b in batches(small, 2)] == [2, 2, 1]
    assert [[v.image for v in b] for b in batches(small[:3] + other, 4)] == [[0, 0, 0], [1, 1]]
    with pytest.raises(ValueError, match="batch_size=0"):
        list(batches(small, 0))


def test_merging_tiled_views_equals_the_tiled_path():
    """The views of a tiled plan, each segmented by a stand-in (connected components), merge
    into exactly what predict_tiled stitches from the same tiles."""
    image = disks_image(300, 420, seed=4)
    plan = plan_image(0, image.shape, CONFIG, tile=128, overlap=48)
    pixels = plan.pixels(image, Normalization("none"))
    merged = plan.merge([components(view.cut(pixels)) for view in plan.views])
    expected = predict_tiled(image, components, tile=128, overlap=48)
    np.testing.assert_array_equal(merged.boxes, expected.boxes)
    np.testing.assert_array_equal(merged.label_image(), expected.label_image())
    with pytest.raises(ValueError, match="views"):
        plan.merge([])


def test_merging_scaled_views_maps_the_cells_back_and_keeps_the_best():
    """A zoomed plan's cells are stitched in the zoomed image, cut to max_detections there,
    and resized back: here equal to the stand-in's cells of the whole zoomed image."""
    import cv2

    image = disks_image(160, 200, seed=5)
    plan = plan_image(0, image.shape, CONFIG.with_overrides(zoom=2.0, max_detections=10))
    pixels = plan.pixels(image, Normalization("none"))
    merged = plan.merge([components(view.cut(pixels)) for view in plan.views])
    whole = components(cv2.resize(image, (256, 256), interpolation=cv2.INTER_LINEAR))
    expected = whole[:10].resized((160, 200))
    assert merged.image_size == (160, 200) and merged.meta == {"zoom": 2.0} and len(merged) == 10
    np.testing.assert_allclose(merged.scores, expected.scores, rtol=1e-6)
    np.testing.assert_array_equal(merged.label_image() > 0, expected.label_image() > 0)


@pytest.fixture(scope="module")
def small_models():
    return random_models("resnet18", mask_bias=2.0)


def _same(a, b):
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.label_image(), b.label_image())
    assert a.meta == b.meta


@pytest.mark.auto_zoom
def test_predict_batch_of_mixed_images_equals_predict_of_each(small_models, monkeypatch):
    """One small image (a whole view), one large (tiles: auto_tile_above lowered) and one
    crowded (zoom="auto" zooms it; the rule is patched to pick it by size) in one
    predict_batch: the views of all three share batches, and each result equals predict's
    (exactly at batch_size 1)."""
    small, large, crowded = blob_image(seed=5), blob_image(300, 380, cells=30, seed=3), blob_image(120, 150, seed=6)
    monkeypatch.setattr(predictor_module, "auto_zoom", lambda boxes, size, _: 2.0 if size == (120, 150) else 1.0)
    monkeypatch.setattr(predictor_module, "auto_scale", lambda *args: None)
    predictor = Predictor.from_models(*small_models, backend="eager", config=PredictorConfig(
        input_size=(128, 128), zoom="auto", max_detections=60, tile_size=128))
    predictor.auto_tile_above = 200
    alone = [predictor.predict(image, overlap=32) for image in (small, large, crowded)]
    assert [r.meta.get("zoom") for r in alone] == [1.0, None, 2.0]
    for got, want in zip(predictor.predict_batch([small, large, crowded], overlap=32, batch_size=1), alone):
        _same(got, want)
    run, sizes = predictor._run, []
    monkeypatch.setattr(predictor, "_run", lambda batch, original, size: sizes.append(batch.shape[0]) or run(batch, original, size))
    batched = predictor.predict_batch([small, large, crowded], overlap=32, batch_size=4)
    # first round: 1 + 12 tiles (3 x 4 of 128 over 32) + 1 views; second: the 3 x 3 zoomed tiles
    assert sizes == [4, 4, 4, 2] + [4, 4, 1]
    for got, want in zip(batched, alone):
        assert got.meta == want.meta and got.image_size == want.image_size
        matched_detections(got, want, atol=1e-4)


def test_a_native_tile_larger_than_the_input_is_segmented_at_native_resolution(small_models):
    """Tiles of 256 px with a 128 px whole-image input: each tile is a 256 x 256 network
    input with the priors of the 128 px model (not shrunk to 128) and four times its
    detection limit. One such tile of a 256 x 256 image equals the whole image through a
    predictor built for 256 inputs with prior_height 128 (and that limit); a larger image
    tiles the same way in both."""
    from ancis_fast.models.priors import make_priors

    predictor = Predictor.from_models(*small_models, backend="eager", config=CONFIG.with_overrides(tile_size=256))
    explicit = Predictor.from_models(*small_models, backend="eager", config=CONFIG.with_overrides(
        input_size=(256, 256), prior_height=128, max_detections=4 * 40))
    square = blob_image(256, 256, cells=12, seed=8)
    one_tile = predictor.predict(square, tile=256)
    assert len(one_tile) > 3
    whole = explicit.predict(square)
    assert whole.meta.pop("zoom") == 1.0  # a whole view says its zoom, a tiled one does not
    whole = stitch([whole], [(0, 0, 256, 256)], (256, 256))  # a tile's cells are stitched (duplicates go)
    _same(one_tile, whole)
    tile_pipeline = predictor.pipeline_for((256, 256))
    assert tile_pipeline is not predictor.pipeline and predictor.pipeline_for((256, 256)) is tile_pipeline
    assert (tile_pipeline.max_det, predictor.pipeline.max_det) == (4 * 40, 40)  # limits grow with the area
    torch.testing.assert_close(tile_pipeline.priors, make_priors(256, 256, scale_height=128), rtol=0, atol=0)
    assert predictor.pipeline_for((128, 128)) is predictor.pipeline
    image = blob_image(300, 380, cells=30, seed=3)
    tiled = predictor.predict(image, tile=256, overlap=32)
    _same(tiled, explicit.predict(image, tile=256, overlap=32))
    predictor.auto_tile_above = 200  # above it, the same tiles come without asking
    _same(predictor.predict(image, overlap=32), tiled)
