"""Real-image training crops at the inference scale, and sources used one after the other."""
import cv2
import numpy as np
import pytest

from ancis_fast.data.classes import BRIGHTFIELD, FLUORESCENCE, TISSUE
from ancis_fast.data.sample import Sample, label_extents
from ancis_fast.train.config import StageConfig
from ancis_fast.train.data import ConcatSource, FrameCrops, SyntheticSource, parse_class_weights, validation_size
from ancis_fast.data.synthetic import SynthConfig


def _square_cells(height, width, side, name):
    """Gray image with ``side`` px square cells on a 3 * side grid, and its labels."""
    image = np.full((height, width), 10, np.uint8)
    labels = np.zeros((height, width), np.int32)
    k = 0
    for y in range(side, height - 2 * side, 3 * side):
        for x in range(side, width - 2 * side, 3 * side):
            k += 1
            image[y:y + side, x:x + side] = 200
            labels[y:y + side, x:x + side] = k
    return Sample(image, labels, name)


def _extents(labels):
    _, bounds = label_extents(labels)
    return bounds[:, 2:] - bounds[:, :2] + 1


def test_crops_are_cut_from_the_image_resized_to_the_frame():
    # a 1024 x 2048 image is squeezed to the 512 x 512 frame as the Predictor does: cells of
    # 40 px become 20 px high and 10 px wide at scale 1
    source = [_square_cells(1024, 2048, 40, "wide")]
    crops = FrameCrops(source, frame=(512, 512), crop=(256, 256), classes=[FLUORESCENCE], scales=(1.0, 1.0))
    sample = crops[0]
    assert sample.image.shape == (256, 256, 3) and sample.image.dtype == np.uint8
    assert sample.labels.shape == (256, 256)
    whole = _extents(sample.labels)
    inner = whole[(whole[:, 0] > 15) & (whole[:, 1] > 7)]  # cells not cut by the crop's border
    assert len(inner) >= 10
    np.testing.assert_allclose(np.median(inner, axis=0), [20, 10], atol=1)


def test_scales_enlarge_within_their_range_and_are_reproducible():
    source = [_square_cells(512, 512, 12, "a")]
    crops = FrameCrops(source, frame=(512, 512), crop=(128, 128), seed=3, classes=[FLUORESCENCE], length=6,
                       scales=(1.5, 2.0))
    sizes = []
    for index in range(6):
        extents = _extents(crops[index].labels)
        full = extents[(extents >= 12 * 1.5 - 1).all(axis=1)]  # cells not cut by the crop's border
        sizes.append(np.median(full))
        np.testing.assert_array_equal(crops[index].labels, crops[index].labels)  # same draw on every read
    assert all(12 * 1.5 - 1 <= s <= 12 * 2.0 + 1 for s in sizes) and len(set(sizes)) > 1
    crops.set_epoch(1)
    first_epoch = FrameCrops(source, (512, 512), (128, 128), 3, [FLUORESCENCE], length=6, scales=(1.5, 2.0))
    assert any(not np.array_equal(first_epoch[i].labels, crops[i].labels) for i in range(6))


def test_classes_are_drawn_by_weight_and_unweighted_ones_never():
    source = [_square_cells(256, 256, 20, f"{c}{k}") for k, c in enumerate([FLUORESCENCE] * 8 + [TISSUE, BRIGHTFIELD])]
    classes = [FLUORESCENCE] * 8 + [TISSUE, BRIGHTFIELD]
    crops = FrameCrops(source, (256, 256), (128, 128), classes=classes, length=400,
                       class_weights={FLUORESCENCE: 0.5, TISSUE: 0.5})
    drawn = [crops[i].name.split("@")[0] for i in range(len(crops))]
    assert not any(d.startswith(BRIGHTFIELD) for d in drawn)
    tissue_share = np.mean([d.startswith(TISSUE) for d in drawn])
    assert 0.4 < tissue_share < 0.6  # 1 image of 10, drawn half the time
    with pytest.raises(ValueError, match="no weight"):
        FrameCrops(source[-1:], (256, 256), (128, 128), classes=[BRIGHTFIELD], class_weights={TISSUE: 1.0})


def test_class_weights_are_parsed_and_bad_ones_named():
    assert parse_class_weights("fluorescence=0.4, tissue=0.4,brightfield=0.2") == {
        FLUORESCENCE: 0.4, TISSUE: 0.4, BRIGHTFIELD: 0.2}
    assert parse_class_weights("tissue=2") == {TISSUE: 2.0}
    for text, message in [("tisue=1", "'tisue=1'.*one of fluorescence"), ("tissue", "expected CLASS=WEIGHT"),
                          ("tissue=x", "'x' is not a number"), ("tissue=-1", ">= 0"), ("tissue=nan", ">= 0"),
                          ("tissue=0", "no class a positive weight"), ("", "no class a positive weight")]:
        with pytest.raises(ValueError, match=message):
            parse_class_weights(text)


def test_the_train_command_draws_crops_by_its_class_weights(tmp_path):
    import argparse
    from ancis_fast.data.layouts import write_label_layout
    from ancis_fast.train import cli as train_cli

    for k in range(4):
        sample = _square_cells(64, 64, 8, f"img{k}")
        if k % 2:  # dark cells on a light gray background: bright-field
            sample = Sample(255 - sample.image, sample.labels, sample.name)
        write_label_layout(sample, tmp_path / "data")
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-det", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                              "--input-size", "32", "--class-weights", "fluorescence=1"])
    config = StageConfig(out_dir=str(tmp_path / "o"), input_size=(32, 32))
    train, _ = train_cli._sources(args, config)
    assert isinstance(train, FrameCrops)
    assert dict(zip(train.members, train.weights.tolist())) == {FLUORESCENCE: 1.0, BRIGHTFIELD: 0.0}
    with pytest.raises(SystemExit):
        parser.parse_args(["train-det", "--data", "x", "--out", "o", "--class-weights", "tissue=x"])


def test_instances_whose_centre_leaves_the_crop_are_removed():
    image = np.zeros((100, 100), np.uint8)
    labels = np.zeros((100, 100), np.int32)
    labels[0:10, 40:60] = 1  # centre row 4.5
    labels[50:60, 50:60] = 2
    crops = FrameCrops([Sample(image, labels, "x")], (100, 100), (95, 100), classes=[FLUORESCENCE],
                       scales=(1.0, 1.0), length=40)
    tops = set()
    for i in range(40):
        sample = crops[i]
        top = 50 - int(np.flatnonzero((sample.labels == 2).any(axis=1))[0])  # where the window starts
        tops.add(top)
        assert (1 in sample.labels) == (top <= 4.5), top
    assert tops == set(range(6))


def test_placed_crops_are_smaller_pieces_on_a_canvas_of_their_median():
    yy, xx = np.mgrid[0:100, 0:100]
    image = np.dstack([yy, xx, np.full_like(yy, 30)]).astype(np.uint8)
    labels = (yy * 100 + xx + 1).astype(np.int32)  # every pixel its own instance: the labels say where it came from
    crops = FrameCrops([Sample(image, labels, "ramp")], (100, 100), (80, 80), classes=[FLUORESCENCE],
                       scales=(1.0, 1.0), looks=False, placement=0.5, length=40)
    placed_at = set()
    for i in range(40):
        sample = crops[i]
        assert sample.image.shape == (80, 80, 3) and sample.labels.shape == (80, 80)
        rows, cols = np.flatnonzero(sample.labels.any(axis=1)), np.flatnonzero(sample.labels.any(axis=0))
        top, left, height, width = rows[0], cols[0], len(rows), len(cols)
        inside = np.zeros((80, 80), bool)
        inside[top:top + height, left:left + width] = True
        piece = sample.labels[inside].reshape(height, width)
        assert (piece > 0).all() and not sample.labels[~inside].any()
        y, x = (piece - 1) // 100, (piece - 1) % 100
        # an unscaled window of the image, its pixels where its labels are
        assert (y == y[0, 0] + np.arange(height)[:, None]).all()
        assert (x == x[0, 0] + np.arange(width)[None, :]).all()
        np.testing.assert_array_equal(sample.image[inside].reshape(height, width, 3), np.dstack([y, x, np.full_like(y, 30)]))
        if (height, width) == (80, 80):
            continue  # not placed: a plain crop
        assert 32 <= height <= 80 and 32 <= width <= 80  # 0.4 to 1 of the crop's side
        fill = np.median(sample.image[inside].reshape(-1, 3), axis=0).astype(np.uint8)
        np.testing.assert_array_equal(sample.image[~inside], np.broadcast_to(fill, (int((~inside).sum()), 3)))
        placed_at.add((top, left))
    assert 10 <= len(placed_at) <= 30  # about half placed, at random spots


def test_the_train_command_passes_placement_and_names_a_bad_share(tmp_path):
    import argparse
    from ancis_fast.data.layouts import write_label_layout
    from ancis_fast.train import cli as train_cli

    write_label_layout(_square_cells(64, 64, 8, "img"), tmp_path / "data")
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-seg", "--detector", "d.pt", "--data", str(tmp_path / "data"),
                              "--out", str(tmp_path / "o"), "--input-size", "32", "--placement", "0.3"])
    train, _ = train_cli._sources(args, StageConfig(out_dir=str(tmp_path / "o"), input_size=(32, 32)))
    assert isinstance(train, FrameCrops) and train.placement == 0.3
    with pytest.raises(SystemExit):
        parser.parse_args(["train-det", "--data", "x", "--out", "o", "--placement", "1.5"])
    with pytest.raises(ValueError, match="placement"):
        FrameCrops([_square_cells(64, 64, 8, "img")], (64, 64), (32, 32), classes=[TISSUE], placement=-0.1)


def test_concatenated_sources_index_through_and_forward_the_epoch():
    synth = SyntheticSource(3, SynthConfig(size=(32, 32), count=(1, 2)), seed=1)
    crops = FrameCrops([_square_cells(64, 64, 8, "r")], (64, 64), (32, 32), classes=[TISSUE], length=2)
    both = ConcatSource([synth, crops])
    assert len(both) == 5
    assert both[4].name == crops[1].name and np.array_equal(both[1].labels, synth[1].labels)
    both.set_epoch(2)
    assert synth.epoch == 2 and crops.epoch == 2
    with pytest.raises(IndexError):
        both[5]


def test_validation_frame_is_the_inference_input_for_folders():
    config = StageConfig(out_dir="x", input_size=(256, 256), prior_height=512)
    assert config.frame_size() == (512, 512)
    assert StageConfig(out_dir="x", input_size=(256, 320)).frame_size() == (256, 320)
    synth = SyntheticSource(1, SynthConfig(size=(256, 256)), fresh=False)
    assert validation_size(synth, (256, 256), config.frame_size()) == (256, 256)
    assert validation_size([_square_cells(64, 64, 8, "r")], (256, 256), config.frame_size()) == (512, 512)


def test_fluorescence_crops_sometimes_take_the_brightfield_look_with_labels_unchanged():
    source = [_square_cells(256, 256, 16, "f")]
    plain = FrameCrops(source, (256, 256), (128, 128), seed=5, classes=[FLUORESCENCE], length=60, looks=False)
    looked = FrameCrops(source, (256, 256), (128, 128), seed=5, classes=[FLUORESCENCE], length=60)
    changed = 0
    for i in range(60):
        a, b = plain[i], looked[i]
        np.testing.assert_array_equal(a.labels, b.labels)  # the look never moves a nucleus
        if not np.array_equal(a.image, b.image):
            changed += 1
            gray = cv2.cvtColor(a.image, cv2.COLOR_BGR2GRAY)
            np.testing.assert_array_equal(b.image[:, :, 0], 255 - gray)  # gray, inverted: dark nuclei on white
            assert b.image[a.labels > 0].mean() < b.image[a.labels == 0].mean()
    assert 2 <= changed <= 20  # about 15 % of 60


def test_tissue_crops_get_jittered_stains_and_a_gray_look():
    image = np.zeros((128, 128, 3), np.uint8)
    image[:] = (200, 150, 220)  # pink background
    labels = np.zeros((128, 128), np.int32)
    labels[40:60, 40:60] = 1
    image[labels > 0] = (150, 60, 90)  # purple nucleus
    looked = FrameCrops([Sample(image, labels, "t")], (128, 128), (128, 128), seed=2, classes=[TISSUE], length=80,
                        scales=(1.0, 1.0))
    backgrounds = np.array([looked[i].image[5, 5].astype(int) for i in range(80)])
    gray = (backgrounds == backgrounds[:, :1]).all(axis=1)
    assert 3 <= gray.sum() <= 25  # about 15 % of 80
    assert len({tuple(b) for b in backgrounds[~gray]}) > 20  # stains differ from crop to crop
    assert (np.abs(backgrounds[~gray] - [200, 150, 220]) <= 0.2 * 220 + 13).all()
