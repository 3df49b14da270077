"""The napari plugin's parts that need neither Qt nor napari: layer data as planes, cells
numbered across planes, the predictor cache, and `import ancis_fast` staying free of both."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ancis_fast import Instances
from ancis_fast.masks import PatchMasks
from ancis_fast.napari.planes import CellTable, ImageStack, PlaneCells
from ancis_fast.napari.settings import PredictorCache, SegmentSettings
from conftest import random_models


def layer(data, rgb=False, name="img", multiscale=False):
    return SimpleNamespace(data=data, rgb=rgb, name=name, multiscale=multiscale)


def test_import_ancis_fast_loads_neither_qt_nor_napari():
    code = ("import sys, ancis_fast, ancis_fast.napari.planes, ancis_fast.napari.settings; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'napari', 'qtpy', 'PyQt5', 'PyQt6', "
            "'PySide2', 'PySide6', 'magicgui', 'vispy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rgb_stack_planes_are_bgr_copies_indexed_by_the_leading_axes():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, (2, 3, 20, 30, 3), dtype=np.uint16)  # (T, Z, H, W, RGB)
    stack = ImageStack.from_layer(layer(data, rgb=True))
    assert stack.leading_shape == (2, 3) and stack.plane_shape == (20, 30) and stack.labels_shape == (2, 3, 20, 30)
    assert stack.planes() == [(t, z) for t in range(2) for z in range(3)]
    image = stack.image((1, 2))
    assert image.dtype == np.uint16 and image.flags.c_contiguous
    np.testing.assert_array_equal(image[..., 0], data[1, 2, ..., 2])  # B first
    np.testing.assert_array_equal(image[..., 2], data[1, 2, ..., 0])
    data[1, 2] = 0
    assert image.any()  # a copy: later writes to the layer do not reach it
    assert stack.plane_at([0.6, 7.2, 3.0, 4.0]) == (1, 2)  # rounded and clipped to the axes
    assert stack.plane_at([-3, 1.4, 0, 0]) == (0, 1)


def test_gray_image_rgba_and_multiscale_layers():
    gray = ImageStack.from_layer(layer(np.zeros((20, 30), np.float32)))
    assert gray.leading_shape == () and gray.planes() == [()] and gray.image(()).shape == (20, 30)
    rgba = ImageStack.from_layer(layer(np.arange(4 * 5 * 4, dtype=np.uint8).reshape(4, 5, 4), rgb=True))
    np.testing.assert_array_equal(rgba.image(())[0, 0], [2, 1, 0])  # alpha dropped, BGR
    pyramid = [np.ones((40, 60), np.uint8), np.ones((20, 30), np.uint8)]
    assert ImageStack.from_layer(layer(pyramid, multiscale=True)).plane_shape == (40, 60)


@pytest.mark.parametrize("data, rgb, message", [
    (np.zeros((64, 64, 3), np.uint8), False, r"'img' has shape \(64, 64, 3\).*not RGB.*rgb=True"),
    (np.zeros((5, 64, 64, 4), np.uint8), False, "4 colour channels"),
    (np.zeros(64, np.uint8), False, "expected a 2-D image"),
    (np.zeros((64, 64), bool), False, "holds bool values"),
])
def test_layers_that_cannot_be_segmented_are_named_with_what_to_do(data, rgb, message):
    with pytest.raises(ValueError, match=message):
        ImageStack.from_layer(layer(data, rgb))


def cells(plane, ids, size=(6, 8)):
    """PlaneCells whose cell k (1-based) covers row k - 1 of a ``size`` plane."""
    labels = np.zeros(size, np.uint16)
    for k in range(1, ids + 1):
        labels[k - 1] = k
    boxes = np.array([[k - 1, 0, k, size[1]] for k in range(1, ids + 1)], np.float32).reshape(-1, 4)
    return PlaneCells(plane, labels, np.linspace(0.9, 0.5, ids, dtype=np.float32), np.full(ids, size[1]), boxes)


def test_cells_are_numbered_across_planes_and_replaced_per_plane():
    table = CellTable(leading_axes=1)
    first = table.add(cells((0,), 2))
    second = table.add(cells((1,), 3))
    assert first.dtype == np.uint32 and set(np.unique(first)) == {0, 1, 2}
    assert set(np.unique(second)) == {0, 3, 4, 5}  # after plane 0's ids
    again = table.add(cells((0,), 1))  # plane 0 segmented again: new ids after the highest
    assert set(np.unique(again)) == {0, 6}
    features = table.features()
    assert list(features["index"]) == [6, 3, 4, 5] and list(features["axis0"]) == [0, 1, 1, 1]
    assert list(features) == ["index", "axis0", "score", "area", "y1", "x1", "y2", "x2"]
    rectangles = table.rectangles()
    assert len(rectangles) == 4 and rectangles[1].shape == (4, 3)
    np.testing.assert_array_equal(rectangles[1], [[1, 0, 0], [1, 0, 8], [1, 1, 8], [1, 1, 0]])


def test_a_2d_image_keeps_ids_1_to_n_and_its_label_dtype():
    table = CellTable(leading_axes=0)
    table.add(cells((), 3))
    shown = table.add(cells((), 2))
    assert shown.dtype == np.uint16 and set(np.unique(shown)) == {0, 1, 2}
    assert list(table.features()["index"]) == [1, 2] and "axis0" not in table.features()
    assert all(len(column) == 0 for column in CellTable(1).features().values())


def test_plane_cells_show_each_pixel_once_with_visible_areas():
    masks = np.zeros((3, 10, 10), bool)
    masks[0, 2:6, 2:6] = True  # best score
    masks[1, 4:8, 4:8] = True  # partly under the first
    masks[2, 3:5, 3:5] = True  # wholly under the first: not shown
    found = Instances(np.array([[2, 2, 6, 6], [4, 4, 8, 8], [3, 3, 5, 5]], np.float32),
                      np.array([0.9, 0.8, 0.7], np.float32), PatchMasks.from_dense(masks))
    shown = PlaneCells.from_instances(found, (4,))
    assert len(shown) == 2 and shown.plane == (4,)
    assert list(shown.areas) == [16, 12] and (shown.labels == 1).sum() == 16 and (shown.labels == 2).sum() == 12


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    detector, segmenter = random_models("resnet18")
    torch.save(detector.state_dict(), folder / "det.pth")
    torch.save(segmenter.state_dict(), folder / "seg.pth")
    return str(folder / "det.pth"), str(folder / "seg.pth")


def test_predictor_cache_rebuilds_only_for_changed_settings(checkpoints):
    cache = PredictorCache()
    settings = SegmentSettings(*checkpoints, backbone="resnet18", backend="eager")
    first = cache.get(settings)
    assert cache.get(SegmentSettings(*checkpoints, backbone="resnet18", backend="eager")) is first
    stricter = cache.get(SegmentSettings(*checkpoints, backbone="resnet18", backend="eager", conf_thresh=0.6,
                                         min_size=5, diameter=20))
    assert stricter is not first and stricter.detector is first.detector  # weights not read again
    assert (stricter.config.conf_thresh, stricter.config.min_size, stricter.config.diameter) == (0.6, 5, 20)
    assert cache.get(settings) is not stricter  # back: rebuilt from the same networks
    with pytest.raises(ValueError, match="both checkpoints"):
        SegmentSettings(checkpoints[0], None)
