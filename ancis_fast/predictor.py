"""`Predictor`: the one entry point for segmenting cells in images.

It loads images and segments them in one loop, one image or many: it plans each image's
*views* (:mod:`ancis_fast.views`: the whole image, native tiles, zoomed or diameter-scaled
tiles), sends all views through the pipeline in batches, and merges each image's views with
the stitcher; ``zoom="auto"`` plans the images whose cells ask for it again, scaled or
zoomed, as a second round.
Live frames go through :meth:`Predictor.stream` instead. The pipelines
(:mod:`ancis_fast.pipeline`) turn network inputs into :class:`~ancis_fast.Instances`, with the
modules the backend registry (:mod:`ancis_fast.backends`) prepares. Settings:
:class:`~ancis_fast.config.PredictorConfig`.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import backends
from .config import PredictorConfig
from .backends.precision import INT8
from .instances import Instances
from .io.readers import load_image
from .models import build_detector, build_segmenter, default_weights, load_weights
from .models.weights import WeightsSource
from .pipeline.fast import FastPipeline
from .pipeline.preprocess import Normalization, preprocess
from .pipeline.reference import ReferencePipeline
from .pipeline.stages import STAGES, StageTimer, untimed
from .streaming import FrameStream
from .tiling import TileCallback
from .views import AUTO_TILE_ABOVE, WHOLE, ImagePlan, View, batches, plan_image, scaled_plan, zoomed_plan
from .zoom import AUTO, auto_scale, auto_zoom, scaled_size

__all__ = ["Predictor", "PredictorConfig", "STAGES"]

GPU_TILE_BATCH = 8  # tiles per pipeline batch on a GPU (predict's default)
ALREADY_8BIT = Normalization("none")  # tiles of an image converted to 8-bit as a whole
ImageInput = Union[str, os.PathLike, np.ndarray]


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'")
    return device


class Predictor:
    """Segment every cell of microscope images with ANCIS.

    Example::

        p = Predictor()                         # bundled ResNet-50 model, CPU, fast path (backend="auto")
        inst = p.predict("nuclei.png")          # or an HxW / HxWx3 (BGR) / HxWx4 array
        labels = inst.label_image()

    Args:
        detector_weights, segmenter_weights: checkpoint paths or state dicts (release
            format); ``None`` for both uses the bundled default model.
        backbone: detector trunk, ``resnet50`` (release default), ``resnet101``, ``resnet152``.
        backend: execution path: ``"auto"`` (default: the fastest for ``device``,
            ``"eager"`` on a CPU and ``"torchscript"`` on a GPU, see
            :data:`~ancis_fast.backends.registry.AUTO_BACKENDS`; :attr:`backend` says which),
            ``"reference"`` (spec-exact, one box at a time; the slowest) or ``"eager"``
            (the batched fast pipeline, :mod:`ancis_fast.pipeline.fast`) or
            ``"torchscript"`` (the same with scripted networks) or ``"compile"`` (the same
            with ``torch.compile``d networks; the first images are slow) or ``"tensorrt"``
            (the detector as a TensorRT engine, cached on disk; NVIDIA GPU and
            ``pip install .[tensorrt]``, see :mod:`ancis_fast.backends.tensorrt`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        config: the settings (:class:`~ancis_fast.config.PredictorConfig`; default: its
            defaults), and ``**overrides`` any of its fields, e.g. ``conf_thresh=0.5``,
            ``precision="bf16"``, ``mode="exact"``, ``zoom=1``, ``diameter=17``,
            ``normalize="minmax"``, ``min_size=30``; see that class for each one.
        calibration: with ``precision="int8"``, images (paths or arrays) to set its
            activation ranges from instead of the default synthetic ones (see :meth:`calibrate`).
    """

    def __init__(self, detector_weights: Optional[WeightsSource] = None,
                 segmenter_weights: Optional[WeightsSource] = None, backbone: str = "resnet50",
                 backend: str = backends.AUTO, device: Union[str, torch.device] = "cpu",
                 config: Optional[PredictorConfig] = None, calibration: Optional[Sequence[ImageInput]] = None,
                 **overrides: Any):
        if (detector_weights is None) != (segmenter_weights is None):
            raise ValueError("give both detector_weights and segmenter_weights (CLI: --weights-det and --weights-seg), "
                             "or neither for the bundled model: a mask head is trained on the features of one "
                             "detector")
        config = (config or PredictorConfig()).with_overrides(**overrides)
        if detector_weights is None:
            detector_weights, segmenter_weights = default_weights()
        detector = load_weights(build_detector(backbone), detector_weights)
        segmenter = load_weights(build_segmenter(backbone), segmenter_weights)
        self._setup(detector, segmenter, backend, device, config, calibration)

    @classmethod
    def from_models(cls, detector: nn.Module, segmenter: nn.Module, backend: str = backends.AUTO,
                    device: Union[str, torch.device] = "cpu", config: Optional[PredictorConfig] = None,
                    calibration: Optional[Sequence[ImageInput]] = None, **overrides: Any) -> "Predictor":
        """Wrap already-built models (e.g. fresh from training); settings as for the constructor."""
        predictor = cls.__new__(cls)
        predictor._setup(detector, segmenter, backend, device, (config or PredictorConfig()).with_overrides(**overrides),
                         calibration)
        return predictor

    def _setup(self, detector: nn.Module, segmenter: nn.Module, backend: str, device, config: PredictorConfig,
               calibration: Optional[Sequence[ImageInput]]) -> None:
        self.device = _resolve_device(device)
        #: the backend that runs (``"auto"`` resolved for the device)
        self.backend = backends.resolve_backend(backend, self.device)
        self.config = config
        self.detector = detector.to(self.device).eval()
        self.segmenter = segmenter.to(self.device).eval()
        #: the images int8's ranges were calibrated on (``None``: the default synthetic ones)
        self.calibration_images: Optional[List[ImageInput]] = _check_calibration(config, calibration)
        #: the pipeline that turns network inputs of ``config.input_size`` into Instances
        #: (ReferencePipeline or FastPipeline); native tiles of other sizes get their own
        #: (:meth:`pipeline_for`)
        self.pipeline = self._build_pipeline(self.config, self.calibration_images)
        self._tile_pipelines: Dict[Tuple[int, int], Any] = {}
        self.auto_tile_above = AUTO_TILE_ABOVE
        #: ``stage_timer(stage, fn, *args)`` runs each of :data:`STAGES` (``fn(*args)``);
        #: benchmarks replace it to time them (``benchmarks/fps.py``)
        self.stage_timer: StageTimer = untimed
        self._lock = threading.RLock()

    def _build_pipeline(self, config: PredictorConfig, calibration: Optional[Sequence[ImageInput]]):
        detector, segmenter = backends.build(self.backend, self.detector, self.segmenter, config, self.device,
                                             calibration)
        if self.backend == "reference":
            return ReferencePipeline(detector, segmenter, config, self.device)
        return FastPipeline.from_config(detector, segmenter, config, self.device,
                                        backends.static_compiler(self.backend, config, self.device))

    def pipeline_for(self, input_size: Tuple[int, int]):
        """The pipeline for network inputs of ``input_size`` ``(H, W)``: :attr:`pipeline`
        for ``config.input_size``, else one built on first use (and kept) with the priors of
        ``config.prior_height`` (else ``config.input_size[0]``), so that a native tile sees
        nuclei at the pixel size of a whole-image input. A larger input's detection limits
        (``max_candidates``, ``max_detections``) grow with its area: a 1024 px tile may hold
        four times the cells of a 512 px input."""
        input_size = (int(input_size[0]), int(input_size[1]))
        if input_size == tuple(self.config.input_size):
            return self.pipeline
        with self._lock:
            if input_size not in self._tile_pipelines:
                self._tile_pipelines[input_size] = self._build_pipeline(self._tile_config(input_size),
                                                                        self.calibration_images)
            return self._tile_pipelines[input_size]

    def _tile_config(self, input_size: Tuple[int, int]) -> PredictorConfig:
        config = self.config
        area = max(1.0, input_size[0] * input_size[1] / (config.input_size[0] * config.input_size[1]))
        return config.with_overrides(
            input_size=input_size, prior_height=config.prior_height or config.input_size[0],
            max_detections=round(config.max_detections * area),
            max_candidates=None if config.max_candidates is None else round(config.max_candidates * area))

    @property
    def priors(self) -> torch.Tensor:
        """The pipeline's priors ``[P, 4]`` (cy, cx, h, w) in network-input pixels."""
        return self.pipeline.priors

    def predict(self, image: ImageInput, tile: Optional[int] = None, overlap: int = 64,
                progress: bool = False, batch_size: Optional[int] = None,
                on_tile: Optional[TileCallback] = None) -> Instances:
        """Segment one image (path or array); see :class:`~ancis_fast.Instances`.

        The image is resized to the input size (spec §1; ``meta["zoom"]`` 1) and, with
        ``zoom="auto"``, segmented again when the cells found ask for it: scaled when their
        size is far from the best (``meta["scale"]``), zoomed when they are crowded
        (``meta["zoom"]``); see :mod:`ancis_fast.zoom`. Or it is enlarged and segmented in
        tiles as a fixed ``config.zoom`` says (``meta["zoom"]``), or scaled as
        ``config.diameter`` says and segmented in input-size tiles (``meta["scale"]``).
        Images whose longer side exceeds ``auto_tile_above`` (default
        2048 px), or any image when ``tile`` is given, are instead segmented in ``tile x
        tile`` pieces at native resolution (default: ``config.tile_size``, 1024) that overlap by
        ``overlap`` px (at least the largest cell) and are stitched so that every cell comes
        whole from one tile (see :mod:`ancis_fast.tiling`; :mod:`ancis_fast.views` plans
        these *views* of the image). ``progress`` shows a bar of the tiles; ``on_tile(done,
        total)``, if given, is called instead after each tile (in the calling thread; an
        exception it raises stops the prediction there). Tiles go through the pipeline
        ``batch_size`` at a time (default: 1 on a CPU, where batching gains nothing,
        :data:`GPU_TILE_BATCH` on a GPU); the result does not depend on it. Cells that would
        show fewer than ``config.min_size`` px in the label image are dropped.
        """
        if on_tile is None and progress:
            on_tile = _tile_bar()
        return self._segment_images([self._load(image)], tile, overlap, self._tile_batch(batch_size), on_tile)[0]

    def predict_batch(self, images: Sequence[ImageInput], tile: Optional[int] = None, overlap: int = 64,
                      batch_size: int = 8, progress: bool = False) -> List[Instances]:
        """Segment several images; results in input order. The views of up to ``batch_size``
        images at a time (whole images, tiles; see :mod:`ancis_fast.views`) go through the
        pipeline ``batch_size`` at a time, whatever image they belong to; each result is
        :meth:`predict`'s (with ``batch_size=1`` on a CPU, exactly; batched convolutions may
        round scores differently by ~1e-7)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        results: List[Instances] = []
        bar = tqdm(total=len(images), desc="segmenting", unit="img", disable=not progress)
        for start in range(0, len(images), batch_size):
            arrays = [self._load(image) for image in images[start : start + batch_size]]
            results += self._segment_images(arrays, tile, overlap, batch_size)
            bar.update(len(arrays))
        bar.close()
        return results

    def _segment_images(self, arrays: List[np.ndarray], tile: Optional[int], overlap: int, batch_size: int,
                        on_tile: Optional[TileCallback] = None) -> List[Instances]:
        """The one loop: plan the views of ``arrays``, segment them in batches, merge each
        image's; ``zoom="auto"`` plans the whole images whose cells ask for it again, scaled or
        zoomed."""
        plans = [plan_image(i, array.shape[:2], self.config, tile, overlap, self.auto_tile_above)
                 for i, array in enumerate(arrays)]
        results = self._segment_plans(plans, arrays, batch_size, on_tile)
        second = [plan for plan in (self._second_plan(p, found, overlap) for p, found in zip(plans, results)) if plan]
        for plan, found in zip(second, self._segment_plans(second, arrays, batch_size, on_tile)):
            results[plan.image] = found
        return [self._finish(found) for found in results]

    def _second_plan(self, plan: ImagePlan, found: Instances, overlap: int) -> Optional[ImagePlan]:
        """The second round of ``zoom="auto"`` for a whole image whose cells ``found`` ask
        for it: scaled when their size is far from the best
        (:func:`~ancis_fast.zoom.auto_scale`), else zoomed when they are crowded
        (:func:`~ancis_fast.zoom.auto_zoom`); ``None``: the first round stands."""
        if plan.kind != WHOLE or self.config.zoom != AUTO:
            return None
        config = self.config
        scale = auto_scale(found.areas, found.image_size, config.input_size, config.prior_height)
        if scale is not None:
            return scaled_plan(plan.image, plan.image_size, scaled_size(plan.image_size, scale), config.input_size,
                               overlap, {"scale": scale}, config.max_detections)
        zoom = auto_zoom(found.boxes, found.image_size, config.input_size)
        return None if zoom == 1.0 else zoomed_plan(plan.image, plan.image_size, zoom, config.input_size,
                                                    overlap, config.max_detections)

    def _segment_plans(self, plans: List[ImagePlan], arrays: List[np.ndarray], batch_size: int,
                       on_tile: Optional[TileCallback]) -> List[Instances]:
        """Every view of ``plans`` through the pipeline ``batch_size`` at a time; each image
        merged, and its pixels let go, once its last view is done. Results in plan order."""
        plan_of = {plan.image: plan for plan in plans}
        pending: Dict[int, List[Instances]] = {image: [] for image in plan_of}  # per view, until merged
        pixels: Dict[int, np.ndarray] = {}
        merged: Dict[int, Instances] = {}
        tiles, done = sum(not view.whole for plan in plans for view in plan.views), 0
        for batch in batches([view for plan in plans for view in plan.views], batch_size):
            for view in batch:
                if view.image not in pixels:
                    pixels[view.image] = plan_of[view.image].pixels(arrays[view.image], self.config.normalization)
            for view, found in zip(batch, self._segment_views(batch, [v.cut(pixels[v.image]) for v in batch])):
                pending[view.image].append(found)
                if len(pending[view.image]) == len(plan_of[view.image].views):
                    merged[view.image] = plan_of[view.image].merge(pending.pop(view.image))
                    del pixels[view.image]
                if not view.whole and on_tile is not None:
                    done += 1
                    on_tile(done, tiles)
        return [merged[plan.image] for plan in plans]

    def _segment_views(self, views: List[View], crops: List[np.ndarray]) -> List[Instances]:
        """``crops`` (:meth:`View.cut` of ``views``) through the pipeline as one batch: one
        Instances per view in its crop's pixels."""
        prepared = [self.stage_timer("preprocess", preprocess, crop, view.input_size,
                                     self.config.normalization if view.whole else ALREADY_8BIT)
                    for view, crop in zip(views, crops)]
        return self._run(torch.cat([p[0] for p in prepared]), [p[1] for p in prepared], views[0].input_size)

    def _finish(self, found: Instances) -> Instances:
        """``found`` without the cells whose visible part (after overlaps are resolved, see
        :meth:`Instances.visible`) has fewer than ``config.min_size`` px. Dropping a cell
        only uncovers others, so every cell left shows at least ``min_size`` px."""
        return found[found.visible().areas >= self.config.min_size] if self.config.min_size else found

    def calibrate(self, images: Sequence[ImageInput]) -> "Predictor":
        """Set ``precision="int8"``'s activation ranges from ``images`` (paths or arrays;
        a handful typical of the experiment) instead of the default synthetic images.
        Returns the predictor."""
        images = _check_calibration(self.config, images)
        pipeline = self._build_pipeline(self.config, images)
        with self._lock:
            self.pipeline, self.calibration_images, self._tile_pipelines = pipeline, images, {}
        return self

    def stream(self, frames: Iterable[ImageInput], max_queue: int = 4, drop_oldest: bool = False) -> FrameStream:
        """Segment a sequence of frames (a live feed, a video, a folder) with decoding and
        pre-processing overlapped with inference in a background thread.

        Returns an iterator of :class:`Instances` in input order (frames discarded under
        ``drop_oldest`` are skipped); ``.stats.summary()`` gives latency and FPS.

        Unlike :meth:`predict`, frames are always segmented whole at zoom 1, whatever
        ``config.zoom`` and ``config.diameter`` say (no tiling, no second pass: the same cost for
        every frame of a live feed); ``meta["zoom"]`` of each result says 1. A stream's results
        equal ``predict``'s of a predictor with ``zoom=1``.
        """
        return FrameStream(frames, self._prepare, self._stream_frame, max_queue, drop_oldest,
                           pin_memory=self.device.type == "cuda")

    def _stream_frame(self, batch: torch.Tensor, original_size: Tuple[int, int]) -> Instances:
        found = self._infer(batch, original_size)
        found.meta["zoom"] = 1.0
        return self._finish(found)

    @staticmethod
    def _load(image: ImageInput) -> np.ndarray:
        return load_image(image)

    def _prepare(self, image: ImageInput) -> Tuple[torch.Tensor, Tuple[int, int]]:
        return preprocess(self._load(image), self.config.input_size, self.config.normalization)

    def _tile_batch(self, batch_size: Optional[int]) -> int:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1 (or None: 1 on a CPU, {GPU_TILE_BATCH} on a GPU)")
        return batch_size or (GPU_TILE_BATCH if self.device.type == "cuda" else 1)

    def _infer(self, batch: torch.Tensor, original_size: Tuple[int, int]) -> Instances:
        return self._run(batch, [original_size])[0]

    def _run(self, batch: torch.Tensor, original_sizes: List[Tuple[int, int]],
             input_size: Optional[Tuple[int, int]] = None) -> List[Instances]:
        """The pipeline for ``input_size`` (default: ``config.input_size``) on network inputs
        ``batch [B,3,H,W]``: Instances at ``original_sizes``."""
        # One inference at a time: the models are shared, and parallel calls would only
        # oversubscribe the cores. Pre-processing and I/O stay outside the lock.
        with self._lock:
            pipeline = self.pipeline_for(input_size or self.config.input_size)
            return pipeline.run(batch.to(self.device, non_blocking=True), original_sizes, self.stage_timer)


def _check_calibration(config: PredictorConfig,
                       images: Optional[Sequence[ImageInput]]) -> Optional[List[ImageInput]]:
    """``images`` as a list (``None`` stays ``None``), or a ``ValueError`` unless they can
    calibrate ``config``'s int8 ranges."""
    if images is None:
        return None
    if config.precision != INT8:
        raise ValueError(f"calibration images (calibrate(), calibration=) set int8 ranges; this predictor runs "
                         f"precision={config.precision!r}")
    if len(images) == 0:
        raise ValueError("int8 calibration needs at least one image")
    return list(images)


def _tile_bar() -> TileCallback:
    """A :data:`~ancis_fast.tiling.TileCallback` that shows a tqdm bar of the tiles."""
    bar: Optional[tqdm] = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="tiles", unit="tile", leave=False)
        bar.update(1)
        if done == total:
            bar.close()

    return update
