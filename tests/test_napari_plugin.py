"""The napari plugin in a real viewer (napari's ``make_napari_viewer`` and pytest-qt's
``qtbot``; under a virtual display on CI, see .ci/run): the manifest, Run against
Predictor.predict, planes of RGB 16-bit stacks, cancel, live mode, bad input."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="napari is not installed (pip install .[napari], or "
                                              "WITH_NAPARI=1 bash scripts/setup.sh)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install .[napari])")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display for Qt: run the napari tests under a virtual one (xvfb-run -a; .ci/run does)",
                allow_module_level=True)

import torch  # noqa: E402

try:
    import tomllib
except ImportError:  # Python 3.10: pip's copy of the same parser
    from pip._vendor import tomli as tomllib
from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

from ancis_fast import Predictor  # noqa: E402
from ancis_fast.io.readers import read_image  # noqa: E402
from ancis_fast.models.weights import ASSETS  # noqa: E402
from ancis_fast.napari.settings import PredictorCache  # noqa: E402
from ancis_fast.napari.widget import ALL_PLANES, CHECKPOINTS, SegmentCellsWidget  # noqa: E402
from conftest import random_models  # noqa: E402

# npe2's fixture: each test gets a plugin manager of its own with discovery blocked, so the
# installed plugin's commands are never registered twice across the tests' viewers
pytestmark = pytest.mark.usefixtures("one_thread", "npe2pm")
ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "ancis_fast" / "napari.yaml"
WAIT_MS = 180_000  # one prediction takes seconds on a busy 2-core CPU


@pytest.fixture(scope="module")
def sample():
    return read_image(ASSETS / "sample.png")


@pytest.fixture(scope="module")
def predictors():
    """One cache for the module's widgets: the bundled model is read once."""
    return PredictorCache()


@pytest.fixture
def make_widget(make_napari_viewer, predictors, qtbot):
    made = []

    def make(*images, **image_options):
        viewer = make_napari_viewer()
        for image in images:
            viewer.add_image(image, **image_options)
        widget = SegmentCellsWidget(viewer)
        widget.predictors = predictors
        viewer.window.add_dock_widget(widget)
        made.append(widget)
        return viewer, widget

    yield make
    for widget in made:  # leave no worker thread behind for the next test
        widget.cancel()
        widget.live_check.setChecked(False)
        qtbot.waitUntil(lambda: widget.idle, timeout=WAIT_MS)


def run_and_wait(widget, qtbot):
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def new_errors(before):
    return [n.message for n in notification_manager.records[before:] if n.severity == NotificationSeverity.ERROR]


def bgr(rgb):
    return np.ascontiguousarray(rgb[..., ::-1])


# ------------------------------------------------------------------ manifest

def test_manifest_registers_the_widget_and_the_samples(make_napari_viewer, npe2pm):
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # napari finds the manifest through this entry point, and loads it only when its name is the package's
    assert project["entry-points"]["napari.manifest"] == {manifest.name: "ancis_fast:napari.yaml"}
    assert manifest.name == project["name"]
    npe2pm.register(manifest)  # this test's own plugin manager: discovery blocked, nothing left behind
    viewer = make_napari_viewer()
    layers = viewer.open_sample(manifest.name, "sample")
    np.testing.assert_array_equal(layers[0].data, read_image(ASSETS / "sample.png"))
    viewer.open_sample(manifest.name, "dsb2018_nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(manifest.name, "Segment cells")
    assert isinstance(widget, SegmentCellsWidget)  # given the viewer (napari passes a proxy of it)
    assert [widget.layer_box.itemText(i) for i in range(widget.layer_box.count())] == ["sample", "dsb2018_nuclei"]


# ------------------------------------------------------------------ run

def test_run_on_the_sample_gives_the_cells_of_predictor_predict(make_widget, qtbot, sample):
    viewer, widget = make_widget(sample, name="sample")
    run_and_wait(widget, qtbot)
    want = Predictor().predict(sample).without_overlaps()  # what `ancis-fast predict` writes
    labels = viewer.layers["sample cells"]
    assert len(want) > 100 and labels.data.max() == len(want)
    np.testing.assert_array_equal(labels.data, want.label_image())
    features = labels.features
    np.testing.assert_array_equal(features["index"], np.arange(1, len(want) + 1))
    np.testing.assert_allclose(features["score"], want.scores)
    np.testing.assert_array_equal(features["area"], want.areas)
    np.testing.assert_allclose(features[["y1", "x1", "y2", "x2"]].to_numpy(), want.boxes)
    assert widget.progress_bar.value() == widget.progress_bar.maximum()
    assert widget.status_label.text().startswith(f"{len(want)} cells in")
    predictor = widget.predictors.get(widget.settings())
    widget.threshold_box.setValue(0.6)  # a setting the pipeline holds: a new predictor
    assert widget.predictors.get(widget.settings()) is not predictor
    widget.threshold_box.setValue(0.3)
    run_and_wait(widget, qtbot)  # the same again: the same cells, the layer reused
    assert [layer.name for layer in viewer.layers] == ["sample", "sample cells"]
    np.testing.assert_array_equal(viewer.layers["sample cells"].data, want.label_image())


def test_rgb_16bit_time_lapse_current_plane_then_all_planes(make_widget, qtbot, sample):
    gray = sample[:256, :256].astype(np.uint16) * 200
    frames = np.stack([gray, gray[::-1]])  # (T, H, W)
    rgb = np.stack([frames, frames // 2 + 1000, frames // 3], axis=-1)  # (T, H, W, RGB), 16-bit
    viewer, widget = make_widget(rgb, name="movie", rgb=True)
    widget.boxes_check.setChecked(True)
    viewer.dims.set_current_step(0, 1)
    run_and_wait(widget, qtbot)
    predictor = widget.predictors.get(widget.settings())
    want = [predictor.predict(bgr(rgb[t])).without_overlaps() for t in range(2)]
    labels = viewer.layers["movie cells"]
    assert labels.data.shape == (2, 256, 256) and not labels.data[0].any()
    np.testing.assert_array_equal(labels.data[1], want[1].label_image())

    widget.planes_box.setCurrentText(ALL_PLANES)
    run_and_wait(widget, qtbot)
    assert viewer.layers["movie cells"] is labels
    n0, n1 = len(want[0]), len(want[1])
    assert n0 > 10 and n1 > 10
    np.testing.assert_array_equal(labels.data[0], want[0].label_image())
    np.testing.assert_array_equal(labels.data[1], np.where(want[1].label_image() > 0,
                                                           want[1].label_image().astype(np.uint32) + n0, 0))
    features = labels.features
    np.testing.assert_array_equal(features["index"], np.arange(1, n0 + n1 + 1))
    np.testing.assert_array_equal(features["axis0"], [0] * n0 + [1] * n1)
    boxes = viewer.layers["movie boxes"]
    assert boxes.ndim == 3 and boxes.nshapes == n0 + n1
    np.testing.assert_allclose(boxes.data[n0][0], [1, *want[1].boxes[0, :2]])  # plane 1's first box, (t, y1, x1)


def test_cancel_stops_inside_a_tiled_plane_and_keeps_the_viewer(make_widget, qtbot, sample):
    movie = np.stack([sample[:256, :256], sample[256:, 256:], sample[:256, 256:]])
    viewer, widget = make_widget(movie, name="movie")
    widget.planes_box.setCurrentText(ALL_PLANES)
    widget.diameter_box.setValue(14)  # 256 px scaled to 658 px: segmented in 4 tiles of 512
    progress = []
    widget.progress_bar.valueChanged.connect(progress.append)
    shown = []
    widget.cells_shown.connect(shown.append)
    widget.run()
    qtbot.waitUntil(lambda: any(0 < p < widget.progress_bar.maximum() for p in progress), timeout=WAIT_MS)
    widget.cancel()  # after the first tile of the first plane
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert shown == [] and max(progress) < widget.progress_bar.maximum() // 2
    assert widget.status_label.text().startswith("cancelled") and widget.run_button.isEnabled()
    assert [layer.name for layer in viewer.layers] == ["movie"]

    widget.diameter_box.setValue(0)  # unknown: one pass per plane, so a cancel stops between planes
    widget.cells_shown.connect(lambda _: widget.cancel())
    run_and_wait(widget, qtbot)
    assert [s.plane for s in shown] in ([(0,)], [(0,), (1,)])  # the worker may have begun plane 1
    labels = viewer.layers["movie cells"]
    assert labels.data[0].max() == len(shown[0].cells) > 0 and not labels.data[2].any()
    assert len(labels.features) == sum(len(s.cells) for s in shown)


# ------------------------------------------------------------------ live

def test_live_mode_shows_every_frame_not_superseded(make_widget, qtbot, sample):
    frames = [sample, sample[::-1], sample[:, ::-1], sample.T.copy(), sample[::-1, ::-1]]
    viewer, widget = make_widget(frames[0], name="camera")
    layer = viewer.layers["camera"]
    shown = []
    widget.cells_shown.connect(lambda s: shown.append((s, viewer.layers["camera cells"].data.copy())))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    widget.live_check.setChecked(True)  # frame 0: the layer as it is
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=WAIT_MS)
    for frame in frames[1:]:  # a camera faster than the model: frames replace each other
        layer.data = frame
    qtbot.waitUntil(lambda: widget.live_shown + widget.live_skipped == widget.live_submitted == len(frames),
                    timeout=WAIT_MS)
    timer.stop()
    order = [item.frame for item, _ in shown]
    assert order == sorted(set(order)) and order[0] == 0 and order[-1] == len(frames) - 1  # newest always shown
    assert widget.live_shown == len(shown) >= 2 and widget.live_label.text().startswith("live: ")
    reference = Predictor(zoom=1)  # Predictor.stream's results: whole frames at zoom 1
    for item, labels in shown:
        want = reference.predict(frames[item.frame]).without_overlaps().label_image()
        np.testing.assert_array_equal(item.cells.labels, want)
        np.testing.assert_array_equal(labels, want)  # the layer showed it
        assert item.latency_s > 0
    stall = np.diff(ticks).max()
    assert stall < 0.5 * np.median([item.latency_s for item, _ in shown])  # the GUI never waits for a frame

    widget.live_check.setChecked(False)
    layer.data = frames[0]
    qtbot.wait(300)
    assert len(shown) == len(order)  # off: nothing more is segmented


def test_live_mode_follows_the_slider_of_a_stack(make_widget, qtbot, sample):
    movie = np.stack([sample[:256, :256], sample[256:, 256:]])
    viewer, widget = make_widget(movie, name="movie")
    shown = []
    widget.cells_shown.connect(shown.append)
    widget.live_check.setChecked(True)
    qtbot.waitUntil(lambda: len(shown) == 1, timeout=WAIT_MS)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=WAIT_MS)
    assert [s.plane for s in shown] == [(0,), (1,)]
    labels = viewer.layers["movie cells"]
    assert labels.data[0].any() and labels.data[1].any()
    assert set(labels.features["axis0"]) == {0, 1}


# ------------------------------------------------------------------ bad input

def test_bad_input_is_a_notification_and_leaves_the_viewer_as_it_was(make_widget, qtbot, sample, tmp_path):
    viewer, widget = make_widget()
    before = len(notification_manager.records)
    widget.run()
    assert any("no image layer" in m for m in new_errors(before)) and not widget.busy
    assert widget.status_label.text().startswith("error: no image layer")
    widget.live_check.setChecked(True)
    assert not widget.live_check.isChecked() and not widget.live

    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="three", rgb=False)
    before = len(notification_manager.records)
    widget.run()
    assert any("'three' has shape (64, 64, 3)" in m and "rgb=True" in m for m in new_errors(before))
    assert [layer.name for layer in viewer.layers] == ["three"] and not widget.busy

    viewer.layers.clear()
    viewer.add_image(sample, name="sample")
    widget.model_box.setCurrentText(CHECKPOINTS)
    widget.detector_edit.setText(str(ASSETS / "sample.png"))
    before = len(notification_manager.records)
    widget.run()
    assert any("both checkpoints" in m for m in new_errors(before))

    widget.segmenter_edit.setText(str(ASSETS / "sample.png"))  # a PNG, not a checkpoint
    before = len(notification_manager.records)
    run_and_wait(widget, qtbot)
    assert any("is not a PyTorch checkpoint: it is a PNG image" in m for m in new_errors(before))

    detector, segmenter = random_models("resnet18")
    torch.save(detector.state_dict(), tmp_path / "det.pth")
    torch.save(segmenter.state_dict(), tmp_path / "seg.pth")
    widget.detector_edit.setText(str(tmp_path / "det.pth"))
    widget.segmenter_edit.setText(str(tmp_path / "seg.pth"))  # resnet18 weights, backbone resnet50
    before = len(notification_manager.records)
    run_and_wait(widget, qtbot)
    assert any("det.pth' does not fit Detector" in m for m in new_errors(before))
    widget.live_check.setChecked(True)
    qtbot.waitUntil(lambda: not widget.live_check.isChecked(), timeout=WAIT_MS)  # live stops on the error
    assert [layer.name for layer in viewer.layers] == ["sample"] and widget.run_button.isEnabled()
