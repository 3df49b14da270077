"""The **Segment cells** dock widget: segment an image layer with a :class:`~ancis_fast.Predictor`
and show the cells as a Labels layer ``"<image> cells"`` (features: score, area, box; the
boxes optionally as a Shapes layer ``"<image> boxes"``).

**Run** segments the current plane or all planes as :meth:`Predictor.predict` does, in a
worker thread, with a progress bar over planes and tiles and a **Cancel** button (planes
already finished stay shown). **Live** re-segments the current plane whenever the layer's
data changes or the slider moves, as :meth:`Predictor.stream` does (each frame whole at
zoom 1, newest frame first, frames superseded before their turn are skipped), showing
each frame's latency. Errors are shown in the widget and as napari notifications; the
viewer is left as it was.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Union

import numpy as np
import torch
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QProgressBar, QPushButton, QSpinBox, QWidget)

from ..backends import BACKEND_CHOICES
from ..backends.precision import PRECISION_NAMES
from ..config import PredictorConfig
from ..models.resnet import BACKBONES
from ..streaming import LatestFrame
from .planes import CellTable, ImageStack, Plane, PlaneCells
from .settings import PredictorCache, SegmentSettings

log = logging.getLogger(__name__)

BUNDLED, CHECKPOINTS = "bundled (ResNet-50)", "detector + segmenter checkpoints"
CURRENT_PLANE, ALL_PLANES = "current plane", "all planes"
PROGRESS_STEPS = 1000
DEFAULTS = PredictorConfig()
TABLE = "ancis_fast cells"  # the Labels layer's metadata entry holding its CellTable
MODEL_READY = object()  # what the live worker yields once its predictor is built
LABELS_WAIT_S = 10.0  # the longest the live worker waits for its Labels layer before streaming


class Cancelled(Exception):
    """Raised from the tile callback to stop a prediction that was cancelled."""


@dataclass
class Failed:
    """What a worker yields instead of raising: the error, shown on the GUI thread."""

    error: BaseException


@dataclass
class Shown:
    """One plane's cells as shown (the :attr:`SegmentCellsWidget.cells_shown` signal's value)."""

    layer: str  # the image layer's name
    plane: Plane
    cells: PlaneCells
    latency_s: Optional[float] = None  # live mode: from the data change to the cells shown
    frame: Optional[int] = None  # live mode: which frame handed over since live mode started (0, 1, ...)


@dataclass
class LiveFrame:
    """Where a live frame came from (the tag of its :class:`LatestFrame` entry)."""

    start: int  # which start of live mode it belongs to
    number: int  # frames handed over before this one since live mode started
    layer: Image
    stack: ImageStack
    plane: Plane
    submitted: float  # time.perf_counter() when the change was seen


class SegmentCellsWidget(QWidget):
    """The dock widget (napari passes ``napari_viewer``). See the module docstring."""

    #: emitted on the GUI thread after a plane's cells are shown, with a :class:`Shown`
    cells_shown = Signal(object)
    _progress_changed = Signal(float)  # from worker threads: fraction of the run done

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer
        self.predictors = PredictorCache()
        self._run_worker = None
        self._cancel = threading.Event()
        self._live_worker = None
        self._live_frames: Optional[LatestFrame] = None
        self._live_layer: Optional[Image] = None
        self._live_start = 0
        self._live_submitted = self._live_shown = 0
        self._live_latencies: List[float] = []
        self._live_stream = None
        self._workers: set = set()  # started and not yet finished (including stopped live workers)
        self._started, self._found, self._failed = 0.0, 0, False
        self._build()
        self._progress_changed.connect(self._set_progress)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.moved):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ controls

    def _build(self) -> None:
        form = QFormLayout(self)
        self.layer_box = QComboBox()
        self.model_box = QComboBox()
        self.model_box.addItems([BUNDLED, CHECKPOINTS])
        self.detector_edit, detector_row = self._path_row("detector checkpoint (.pt/.pth)")
        self.segmenter_edit, segmenter_row = self._path_row("segmenter checkpoint (.pt/.pth)")
        self.backbone_box = _combo(sorted(BACKBONES), "resnet50")
        self.device_box = _combo(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())], "cpu")
        self.backend_box = _combo(BACKEND_CHOICES, "auto")
        self.precision_box = _combo(PRECISION_NAMES, DEFAULTS.precision)
        self.diameter_box = QDoubleSpinBox()
        self.diameter_box.setRange(0, 1000)
        self.diameter_box.setSpecialValueText("unknown")  # 0: zoom="auto" decides
        self.diameter_box.setSuffix(" px")
        self.threshold_box = QDoubleSpinBox()
        self.threshold_box.setRange(0, 1)
        self.threshold_box.setSingleStep(0.05)
        self.threshold_box.setValue(DEFAULTS.conf_thresh)
        self.min_size_box = QSpinBox()
        self.min_size_box.setRange(0, 1_000_000)
        self.min_size_box.setSuffix(" px")
        self.planes_box = _combo([CURRENT_PLANE, ALL_PLANES], CURRENT_PLANE)
        self.boxes_check = QCheckBox("boxes as a Shapes layer")
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, PROGRESS_STEPS)
        self.live_check = QCheckBox("re-segment the current plane as it changes")
        self.live_label = QLabel("")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        for label, widget in [("image", self.layer_box), ("model", self.model_box), ("detector", detector_row),
                              ("segmenter", segmenter_row), ("backbone", self.backbone_box),
                              ("device", self.device_box), ("backend", self.backend_box),
                              ("precision", self.precision_box), ("diameter", self.diameter_box),
                              ("detection threshold", self.threshold_box), ("minimum size", self.min_size_box),
                              ("planes", self.planes_box), ("", self.boxes_check), ("", buttons),
                              ("", self.progress_bar), ("live", self.live_check), ("", self.live_label),
                              ("", self.status_label)]:
            form.addRow(label, widget)
        self._checkpoint_rows = [detector_row, segmenter_row, self.backbone_box]
        self.model_box.currentTextChanged.connect(self._show_model_rows)
        self._show_model_rows()
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.live_check.toggled.connect(self._live_toggled)
        self.layer_box.currentTextChanged.connect(self._restart_live)
        for box in (self.model_box, self.backbone_box, self.device_box, self.backend_box, self.precision_box):
            box.currentTextChanged.connect(self._restart_live)
        for edit in (self.detector_edit, self.segmenter_edit):
            edit.editingFinished.connect(self._restart_live)
        for spin in (self.diameter_box, self.threshold_box, self.min_size_box):
            spin.valueChanged.connect(self._restart_live)

    def _path_row(self, placeholder: str):
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        browse.clicked.connect(lambda: self._browse(edit))
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(edit)
        layout.addWidget(browse)
        return edit, row

    def _browse(self, edit: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint", "", "PyTorch checkpoints (*.pt *.pth)")
        if path:
            edit.setText(path)
            self._restart_live()

    def _show_model_rows(self) -> None:
        for row in self._checkpoint_rows:
            row.setEnabled(self.model_box.currentText() == CHECKPOINTS)

    def _refresh_layers(self, event: Any = None) -> None:
        chosen = self.layer_box.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if chosen in names:
            self.layer_box.setCurrentText(chosen)
        self.layer_box.blockSignals(False)
        if self.layer_box.currentText() != chosen:
            self._restart_live()

    def settings(self) -> SegmentSettings:
        """The settings the controls show (``ValueError`` for a half-given checkpoint pair)."""
        checkpoints = self.model_box.currentText() == CHECKPOINTS
        paths = [edit.text().strip() or None for edit in (self.detector_edit, self.segmenter_edit)]
        if checkpoints and None in paths:
            raise ValueError("choose both checkpoints, detector and segmenter, or the bundled model")
        return SegmentSettings(
            detector_path=paths[0] if checkpoints else None, segmenter_path=paths[1] if checkpoints else None,
            backbone=self.backbone_box.currentText() if checkpoints else "resnet50",
            device=self.device_box.currentText(), backend=self.backend_box.currentText(),
            precision=self.precision_box.currentText(), diameter=self.diameter_box.value() or None,
            conf_thresh=self.threshold_box.value(), min_size=self.min_size_box.value())

    def image_layer(self) -> Image:
        """The chosen image layer (``ValueError`` when there is none)."""
        name = self.layer_box.currentText()
        if not name or name not in self.viewer.layers:
            raise ValueError("no image layer to segment: open an image (File > Open, or File > Open Sample > "
                             "ancis_fast) and choose it under 'image'")
        return self.viewer.layers[name]

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        """Segment the chosen layer (the **Run** button)."""
        if self._run_worker is not None:
            return
        try:
            layer = self.image_layer()
            stack = ImageStack.from_layer(layer)
            settings = self.settings()
        except ValueError as exc:
            self._report(exc)
            return
        if self.planes_box.currentText() == ALL_PLANES:
            planes = stack.planes()
            self._forget_cells(stack)
        else:
            planes = [self._current_plane(layer, stack)]
        self._cancel.clear()
        self._set_progress(0.0)
        self.status_label.setText(f"segmenting {len(planes)} plane(s) of {stack.name!r}...")
        self._started, self._found, self._failed = time.perf_counter(), 0, False
        worker = thread_worker(_guarded)(self._segment_planes(settings, stack, planes))
        worker.yielded.connect(lambda item: self._run_result(layer, stack, item))
        worker.finished.connect(lambda: self._run_finished(layer, stack))
        self._run_worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._start(worker)

    def cancel(self) -> None:
        """Stop the run (the **Cancel** button): at the next tile or plane."""
        if self._run_worker is not None:
            self._cancel.set()
            self._run_worker.quit()
            self.status_label.setText("cancelling...")

    @property
    def busy(self) -> bool:
        """Whether a run is going on."""
        return self._run_worker is not None

    @property
    def idle(self) -> bool:
        """Whether no worker thread is left (a stopped live worker ends after its frame)."""
        return not self._workers

    def _start(self, worker: Any) -> None:
        self._workers.add(worker)
        worker.finished.connect(lambda: self._workers.discard(worker))
        worker.start()

    def _segment_planes(self, settings: SegmentSettings, stack: ImageStack, planes: List[Plane]) -> Iterator:
        """Worker thread: each plane's :class:`PlaneCells`, reporting progress over tiles."""
        _import_features_table()
        predictor = self.predictors.get(settings)
        for number, plane in enumerate(planes):
            def on_tile(done: int, total: int, number: int = number) -> None:
                if self._cancel.is_set():
                    raise Cancelled
                self._progress_changed.emit((number + done / total) / len(planes))

            if self._cancel.is_set():
                return
            try:
                found = predictor.predict(stack.image(plane), on_tile=on_tile)
            except Cancelled:
                return
            self._progress_changed.emit((number + 1) / len(planes))
            yield PlaneCells.from_instances(found, plane)

    def _run_result(self, layer: Image, stack: ImageStack, item: Union[PlaneCells, Failed]) -> None:
        if isinstance(item, Failed):
            self._failed = True
            self._report(item.error)
            return
        self._found += len(item)
        self._show(layer, stack, item, publish=len(stack.leading_shape) == 0)

    def _run_finished(self, layer: Image, stack: ImageStack) -> None:
        self._run_worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        labels = self._existing_labels(stack)
        if labels is not None:
            self._publish(labels, layer, stack)
        if self._cancel.is_set():
            self.status_label.setText(f"cancelled; {self._found} cells in the planes finished")
        elif not self._failed:
            seconds = time.perf_counter() - self._started
            self.status_label.setText(f"{self._found} cells in {seconds:.1f} s")

    def _set_progress(self, fraction: float) -> None:
        self.progress_bar.setValue(int(round(fraction * PROGRESS_STEPS)))

    # ------------------------------------------------------------------ live

    @property
    def live(self) -> bool:
        """Whether live mode is on."""
        return self._live_frames is not None

    def _live_toggled(self, on: bool) -> None:
        self._stop_live()
        if on:
            self._start_live()

    def _restart_live(self, *args: Any) -> None:
        if self.live:
            self._stop_live()
            self._start_live()

    def _start_live(self) -> None:
        try:
            layer = self.image_layer()
            ImageStack.from_layer(layer)
            settings = self.settings()
        except ValueError as exc:
            self._report(exc)
            self.live_check.setChecked(False)
            return
        self._live_start += 1
        self._live_frames, self._live_layer = LatestFrame(), layer
        self._live_submitted, self._live_shown, self._live_latencies = 0, 0, []
        self.live_label.setText("live: waiting for the first frame...")
        worker = thread_worker(_guarded)(self._live_results(settings, self._live_frames))
        worker.yielded.connect(self._live_result)
        self._live_worker = worker
        layer.events.data.connect(self.submit_live_frame)
        self.viewer.dims.events.current_step.connect(self.submit_live_frame)
        self._start(worker)
        self.submit_live_frame()

    def _stop_live(self) -> None:
        if self._live_frames is None:
            return
        self._live_frames.close()
        self._live_worker.quit()
        self._live_layer.events.data.disconnect(self.submit_live_frame)
        self.viewer.dims.events.current_step.disconnect(self.submit_live_frame)
        self._live_frames = self._live_layer = self._live_worker = self._live_stream = None
        self.live_label.setText("")

    def submit_live_frame(self, event: Any = None) -> None:
        """Hand the live layer's current plane to the live worker (on a data change or a
        slider move; a frame still waiting is superseded)."""
        if self._live_frames is None:
            return
        layer = self._live_layer
        try:
            stack = ImageStack.from_layer(layer)
            plane = self._current_plane(layer, stack)
            image = stack.image(plane)
        except ValueError as exc:
            self._report(exc)
            self.live_check.setChecked(False)
            return
        self._live_frames.put(image, LiveFrame(self._live_start, self._live_submitted, layer, stack, plane,
                                               time.perf_counter()))
        self._live_submitted += 1

    def _live_results(self, settings: SegmentSettings, frames: LatestFrame) -> Iterator:
        """Worker thread: ``(LiveFrame, PlaneCells)`` per frame streamed."""
        _import_features_table()
        predictor = self.predictors.get(settings)
        labels_made = threading.Event()
        yield MODEL_READY, labels_made
        labels_made.wait(LABELS_WAIT_S)  # napari makes a layer faster with the CPU to itself
        stream = predictor.stream(frames, max_queue=1, drop_oldest=True)
        self._live_stream = stream
        for found in stream:
            frame = frames.tag(found.meta["frame_index"])
            yield frame, PlaneCells.from_instances(found, frame.plane)

    def _live_result(self, item: Any) -> None:
        if isinstance(item, Failed):
            self._report(item.error)
            self.live_check.setChecked(False)
            return
        if item[0] is MODEL_READY:  # make the Labels layer now, not when the first frame's cells arrive
            self._ready_live_labels()
            item[1].set()
            return
        frame, cells = item
        if frame.start != self._live_start or frame.stack.name not in self.viewer.layers:
            return  # live mode was stopped or restarted meanwhile
        latency = time.perf_counter() - frame.submitted
        self._show(frame.layer, frame.stack, cells, Shown(frame.stack.name, cells.plane, cells, latency, frame.number))
        self._live_shown += 1
        self._live_latencies.append(latency)
        self.live_label.setText(f"live: {latency * 1000:.0f} ms per frame (median "
                                f"{np.median(self._live_latencies) * 1000:.0f} ms), {self._live_shown} shown, "
                                f"{self.live_skipped} skipped")

    def _ready_live_labels(self) -> None:
        if self._live_layer is None:
            return
        try:
            self._labels_layer(self._live_layer, ImageStack.from_layer(self._live_layer))
        except ValueError:  # the layer changed meanwhile: the next frame says how
            pass

    @property
    def live_submitted(self) -> int:
        """Live frames handed over since live mode was (re)started."""
        return self._live_submitted

    @property
    def live_shown(self) -> int:
        """Live frames segmented and shown since live mode was (re)started."""
        return self._live_shown

    @property
    def live_skipped(self) -> int:
        """Live frames superseded before their turn (never segmented)."""
        if self._live_frames is None:
            return 0
        stream = self._live_stream
        return self._live_frames.dropped + (stream.stats.dropped if stream is not None else 0)

    # ------------------------------------------------------------------ output layers

    def _current_plane(self, layer: Image, stack: ImageStack) -> Plane:
        if not stack.leading_shape:
            return ()
        return stack.plane_at(layer.world_to_data(self.viewer.dims.point))

    def _existing_labels(self, stack: ImageStack) -> Optional[Labels]:
        name = f"{stack.name} cells"
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(layer, Labels) and layer.data.shape == stack.labels_shape and TABLE in layer.metadata:
            return layer
        return None

    def _labels_layer(self, layer: Image, stack: ImageStack) -> Labels:
        """The Labels layer ``"<image> cells"`` of ``stack``'s shape, made or reset if needed."""
        labels = self._existing_labels(stack)
        if labels is not None:
            return labels
        name = f"{stack.name} cells"
        data = np.zeros(stack.labels_shape, np.uint32 if stack.leading_shape else np.uint16)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            labels = self.viewer.layers[name]
            labels.data = data
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            labels = self.viewer.add_labels(data, name=name, scale=layer.scale, translate=layer.translate)
        labels.metadata[TABLE] = CellTable(len(stack.leading_shape))
        return labels

    def _forget_cells(self, stack: ImageStack) -> None:
        labels = self._existing_labels(stack)
        if labels is not None:
            del labels.metadata[TABLE]

    def _show(self, layer: Image, stack: ImageStack, cells: PlaneCells, shown: Optional[Shown] = None,
              publish: bool = True) -> None:
        labels = self._labels_layer(layer, stack)
        ids = labels.metadata[TABLE].add(cells)
        if cells.plane:
            labels.data[cells.plane] = ids
            labels.refresh()
        else:
            labels.data = ids
        if publish:
            self._publish(labels, layer, stack)
        self.cells_shown.emit(shown or Shown(stack.name, cells.plane, cells))

    def _publish(self, labels: Labels, layer: Image, stack: ImageStack) -> None:
        """The features table (and the boxes) of every plane segmented so far."""
        table = labels.metadata[TABLE]
        labels.features = table.features()
        if self.boxes_check.isChecked():
            self._show_boxes(layer, stack, table)

    def _show_boxes(self, layer: Image, stack: ImageStack, table: CellTable) -> None:
        name = f"{stack.name} boxes"
        rectangles = table.rectangles()
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Shapes) and existing.ndim == len(stack.labels_shape):
            existing.data = rectangles
            existing.shape_type = "rectangle"
            return
        if existing is not None:
            self.viewer.layers.remove(name)
        self.viewer.add_shapes(rectangles, shape_type="rectangle", name=name, edge_color="yellow",
                               face_color="transparent", edge_width=1, ndim=len(stack.labels_shape),
                               scale=layer.scale, translate=layer.translate)

    # ------------------------------------------------------------------ errors

    def _report(self, error: BaseException) -> None:
        """Show ``error`` in the widget and as a notification (the message, no traceback,
        for errors about the input; a bug's traceback goes to the log)."""
        if not isinstance(error, (ValueError, OSError)):
            log.error("segmenting failed", exc_info=error)
        message = str(error) if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {error}"
        self.status_label.setText(f"error: {message}")
        show_error(message)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.cancel()
        self._stop_live()
        super().closeEvent(event)


def _import_features_table() -> None:
    """napari turns a layer's features into a pandas table, importing pandas the first time
    (half a second or more); importing it first in a worker keeps that off the GUI thread."""
    try:
        import pandas  # noqa: F401
    except ImportError:  # napari without pandas: nothing to do ahead
        pass


def _guarded(job: Iterator) -> Iterator:
    """``job``'s items, then a :class:`Failed` instead of its exception, so a worker never
    ends in an error napari would show as a traceback."""
    try:
        yield from job
    except Exception as exc:  # shown to the user on the GUI thread
        yield Failed(exc)


def _combo(items, current: str) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setCurrentText(current)
    return box
