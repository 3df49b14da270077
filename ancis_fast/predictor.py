"""`Predictor`: the one entry point for segmenting cells in images."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .instances import Instances
from .masks import PatchMasks, tight_patch
from .io.readers import read_image
from .backends.configure import AUTO as AUTO_BACKEND, configure_pipeline, resolve_backend
from .backends.precision import INT8, check_precision, resolve_precision
from .models import build_detector, build_segmenter, default_weights, load_weights, make_priors
from .models.weights import WeightsSource
from .pipeline import reference
from .pipeline.fast import CROP_SIZES, MODES, FastPipeline, check_crop_sizes
from .pipeline.preprocess import Normalization, preprocess, to_uint8
from .streaming import FrameStream
from .tiling import TileCallback, predict_tiled
from .zoom import AUTO, Zoom, auto_zoom, check_diameter, check_zoom, diameter_scale, scaled_size, zoomed_size

AUTO_TILE_ABOVE = 2048  # px; larger images are tiled at native resolution
STAGES = ("preprocess", "detector", "detect", "mask", "paste")
ALREADY_8BIT = Normalization("none")  # tiles of an image converted to 8-bit as a whole
ImageInput = Union[str, os.PathLike, np.ndarray]


@dataclass(frozen=True)
class PredictorConfig:
    """Inference settings. ``input_size`` is the network's ``(H, W)``.

    ``prior_height`` sizes the priors for that input height instead of ``input_size[0]``
    (spec §3 scales them with the input height): a model trained at a 512 input keeps its
    prior sizes when run at another input size, e.g. on 256 crops or 1024 tiles.

    ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``): the dtype the fast backends run the
    detector and mask decoder in; detection, crop geometry and pasting stay fp32.

    ``max_candidates`` (``None``: all) and ``max_detections`` bound the detection step per
    image: candidates above ``conf_thresh`` kept before NMS, detections kept after it. The
    release used 200 and 500 (spec §4), which caps a crowded image at far fewer cells than it
    holds (its 200 candidates include several per nucleus); ``max_candidates=200,
    max_detections=500`` reproduces it.

    ``crop_sizes``: the level-0 crop sizes (px, square, ascending) of ``mode="fast"``: each
    box is resampled to the one nearest its own size (halved on each deeper level) and the
    boxes of a size are decoded in one static pass; see :mod:`ancis_fast.pipeline.fast`.

    ``zoom``: ``"auto"`` (default) or a factor from 1 to 4 by which images are enlarged
    (beyond the spec's resize to ``input_size``) and segmented in input-size tiles, for
    crowded small nuclei; 1 is the spec's behaviour. See :mod:`ancis_fast.zoom`.

    ``diameter`` (image px, ``None``: unknown): the typical nucleus diameter; the image is
    scaled so that nuclei reach the size the model segments best and is segmented in
    input-size tiles, instead of ``zoom``. ``min_size`` (px): cells that show fewer pixels
    in the label image (after overlaps are resolved) are dropped.
    """

    input_size: Tuple[int, int] = (512, 512)
    conf_thresh: float = 0.3
    nms_thresh: float = 0.3
    seg_thresh: float = 0.5
    normalization: Normalization = Normalization()
    mode: str = "fast"
    prior_height: Optional[int] = None
    precision: str = "fp32"
    max_candidates: Optional[int] = None
    max_detections: int = 1000
    crop_sizes: Tuple[int, ...] = CROP_SIZES
    zoom: Zoom = AUTO
    diameter: Optional[float] = None
    min_size: int = 0

    def __post_init__(self) -> None:
        check_precision(self.precision)
        object.__setattr__(self, "zoom", check_zoom(self.zoom))
        object.__setattr__(self, "crop_sizes", check_crop_sizes(self.crop_sizes))
        object.__setattr__(self, "diameter", check_diameter(self.diameter))
        if self.diameter is not None and self.zoom != AUTO:
            raise ValueError(f"zoom={self.zoom!r} and diameter={self.diameter!r}: give one (a diameter sets the "
                             f"scale itself)")
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, (int, np.integer)) or self.min_size < 0:
            raise ValueError(f"min_size={self.min_size!r}; expected a whole number of pixels >= 0")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ValueError(f"max_candidates={self.max_candidates}; expected None (all) or a count >= 1")
        if self.max_detections < 1:
            raise ValueError(f"max_detections={self.max_detections}; expected a count >= 1")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {MODES} (used by the fast backends)")
        if len(self.input_size) != 2 or min(self.input_size) < 64:
            raise ValueError(f"input_size={self.input_size}; expected (H, W), each >= 64 (multiples of 64 are best)")
        for name in ("conf_thresh", "nms_thresh", "seg_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}; expected a value in [0, 1]")


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
            :data:`~ancis_fast.backends.configure.AUTO_BACKENDS`; :attr:`backend` says which),
            ``"reference"`` (spec-exact, one box at a time; the slowest) or ``"eager"``
            (the batched fast pipeline, :mod:`ancis_fast.pipeline.fast`) or
            ``"torchscript"`` (the same with scripted networks) or ``"compile"`` (the same
            with ``torch.compile``d networks; the first images are slow) or ``"tensorrt"``
            (the detector as a TensorRT engine, cached on disk; NVIDIA GPU and
            ``pip install .[tensorrt]``, see :mod:`ancis_fast.backends.tensorrt`).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (GPU only): the dtype
            of the fast backends' networks; ``"int8"`` (CPU, eager or torchscript): the
            detector trunk int8, calibrated on synthetic images (see :meth:`calibrate`),
            the rest fp32; the reference backend is fp32 only.
        mode: for the fast backends, ``"fast"`` (static mask stage at one crop size, default) or
            ``"exact"`` (native crop sizes: the reference's masks up to float rounding).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        input_size: network input ``(H, W)``; images are resized to it and back.
        conf_thresh, nms_thresh, seg_thresh: detection score threshold (strict ``>``),
            NMS IoU threshold, mask probability threshold (``>=``).
        normalize, percentiles: how non-8-bit images become 8-bit (see
            :mod:`ancis_fast.pipeline.preprocess`); 8-bit images are unchanged by default.
        max_candidates, max_detections: per-image limits of the detection step, see
            :class:`PredictorConfig` (``200, 500`` for the release's behaviour).
        calibration: with ``precision="int8"``, images (paths or arrays) to set its
            activation ranges from instead of the default synthetic ones (see :meth:`calibrate`).
        zoom: ``"auto"`` (default: crowded images of small nuclei are segmented again
            enlarged 1.875x, see :mod:`ancis_fast.zoom`), or a fixed factor from 1
            (the spec's plain resize to ``input_size``) to 4.
        diameter: typical nucleus diameter in image pixels (``None``: unknown, ``zoom``
            decides); the image is scaled so that nuclei measure ``zoom.BEST_DIAMETER`` px
            at the network and segmented in input-size tiles (``meta["scale"]``).
        min_size: drop cells that show fewer pixels in the label image (default 0: keep all).
    """

    def __init__(
        self,
        detector_weights: Optional[WeightsSource] = None,
        segmenter_weights: Optional[WeightsSource] = None,
        backbone: str = "resnet50",
        backend: str = AUTO_BACKEND,
        device: Union[str, torch.device] = "cpu",
        input_size: Tuple[int, int] = (512, 512),
        conf_thresh: float = 0.3,
        nms_thresh: float = 0.3,
        seg_thresh: float = 0.5,
        normalize: str = "auto",
        percentiles: Tuple[float, float] = (1.0, 99.8),
        mode: str = "fast",
        precision: str = "fp32",
        max_candidates: Optional[int] = None,
        max_detections: int = 1000,
        calibration: Optional[Sequence[ImageInput]] = None,
        zoom: Zoom = AUTO,
        diameter: Optional[float] = None,
        min_size: int = 0,
    ):
        if (detector_weights is None) != (segmenter_weights is None):
            raise ValueError("give both detector_weights and segmenter_weights (CLI: --weights-det and --weights-seg), "
                             "or neither for the bundled model: a mask head is trained on the features of one "
                             "detector")
        if detector_weights is None:
            detector_weights, segmenter_weights = default_weights()
        detector = load_weights(build_detector(backbone), detector_weights)
        segmenter = load_weights(build_segmenter(backbone), segmenter_weights)
        self._setup(detector, segmenter, backend, device, PredictorConfig(
            tuple(input_size), conf_thresh, nms_thresh, seg_thresh, Normalization(normalize, tuple(percentiles)), mode,
            precision=precision, max_candidates=max_candidates, max_detections=max_detections, zoom=zoom,
            diameter=diameter, min_size=min_size), calibration)

    @classmethod
    def from_models(cls, detector: nn.Module, segmenter: nn.Module, backend: str = AUTO_BACKEND,
                    device: Union[str, torch.device] = "cpu", config: PredictorConfig = PredictorConfig(),
                    calibration: Optional[Sequence[ImageInput]] = None) -> "Predictor":
        """Wrap already-built models (e.g. fresh from training)."""
        predictor = cls.__new__(cls)
        predictor._setup(detector, segmenter, backend, device, config, calibration)
        return predictor

    def _setup(self, detector: nn.Module, segmenter: nn.Module, backend: str, device, config: PredictorConfig,
               calibration: Optional[Sequence[ImageInput]] = None) -> None:
        self.device = _resolve_device(device)
        #: the backend that runs (``"auto"`` resolved for the device)
        self.backend = backend = resolve_backend(backend, self.device)
        resolve_precision(config.precision, self.device, backend)
        self.config = config
        self.detector = detector.to(self.device).eval()
        self.segmenter = segmenter.to(self.device).eval()
        self.priors = self.pipeline = None
        #: the images int8's ranges were calibrated on (``None``: the default synthetic ones)
        self.calibration_images: Optional[List[ImageInput]] = _check_calibration(config, calibration)
        if backend == "reference":
            self.priors = make_priors(*config.input_size, device=self.device, scale_height=config.prior_height)
        else:
            self.pipeline = build_fast_pipeline(self.detector, self.segmenter, config, self.device, backend,
                                                self.calibration_images)
        self.auto_tile_above = AUTO_TILE_ABOVE
        #: ``stage_timer(stage, fn, *args)`` runs each of :data:`STAGES` (``fn(*args)``);
        #: benchmarks replace it to time them (``benchmarks/fps.py``)
        self.stage_timer: Callable[..., Any] = _untimed
        self._lock = threading.Lock()

    def predict(self, image: ImageInput, tile: Optional[int] = None, overlap: int = 64,
                progress: bool = False) -> Instances:
        """Segment one image (path or array); see :class:`~ancis_fast.Instances`.

        The image is resized to the input size (spec §1), or enlarged further and segmented
        in tiles as ``config.zoom`` says (``meta["zoom"]`` of the result gives the factor
        used), or scaled as ``config.diameter`` says and segmented in input-size tiles
        (``meta["scale"]``). Images whose longer side exceeds ``auto_tile_above`` (default
        2048 px), or any image when ``tile`` is given, are instead segmented in ``tile x
        tile`` pieces at native resolution (default: the input size) that overlap by
        ``overlap`` px (at least the largest cell) and are stitched so that every cell comes
        whole from one tile (see :mod:`ancis_fast.tiling`). ``progress`` shows a bar of the
        tiles. Cells that would show fewer than ``config.min_size`` px in the label image
        are dropped.
        """
        array = self._load(image)
        on_tile = _tile_bar() if progress else None
        if self.config.diameter is not None:
            if tile is not None:
                raise ValueError(f"tile={tile} and diameter={self.config.diameter:g}: give one (with a diameter "
                                 "the scaled image is segmented in input-size tiles)")
            scale = diameter_scale(self.config.diameter, self.config.prior_height or self.config.input_size[0],
                                   array.shape[:2], self.config.input_size)
            found = self._segment_resized(array, scaled_size(array.shape[:2], scale), overlap, on_tile)
            found.meta["scale"] = scale
        elif tile is not None or max(array.shape[:2]) > self.auto_tile_above:
            found = predict_tiled(to_uint8(array, self.config.normalization), self._predict_uint8,
                                  tile or max(self.config.input_size), overlap, on_tile)
        else:
            found = self._zoom(array, None if self._always_zooms() else self._predict_array(array), overlap,
                               on_tile)
        return self._finish(found)

    def _finish(self, found: Instances) -> Instances:
        """``found`` without the cells whose visible part (after overlaps are resolved, see
        :meth:`Instances.visible`) has fewer than ``config.min_size`` px. Dropping a cell
        only uncovers others, so every cell left shows at least ``min_size`` px."""
        return found[found.visible().areas >= self.config.min_size] if self.config.min_size else found

    def _always_zooms(self) -> bool:
        """A fixed zoom above 1 or a diameter: no plain pass is needed first."""
        return self.config.diameter is not None or self.config.zoom not in (AUTO, 1.0)

    def _zoom(self, array: np.ndarray, first: Optional[Instances], overlap: int,
              on_tile: Optional[TileCallback] = None) -> Instances:
        """The result ``config.zoom`` asks for, given ``first`` (``array`` segmented at zoom
        1; ``None`` for a fixed zoom above 1)."""
        zoom = self.config.zoom
        if zoom == AUTO:
            zoom = auto_zoom(first.boxes, first.image_size, self.config.input_size)
        if zoom == 1.0:
            first.meta["zoom"] = 1.0
            return first
        found = self._segment_resized(array, zoomed_size(self.config.input_size, zoom), overlap, on_tile)
        found.meta["zoom"] = zoom
        return found

    def _segment_resized(self, array: np.ndarray, size: Tuple[int, int], overlap: int,
                         on_tile: Optional[TileCallback]) -> Instances:
        """``array`` converted to 8-bit as a whole, resized to ``size`` ``(H, W)``, segmented
        in input-size tiles and mapped back to its own size."""
        image = to_uint8(array, self.config.normalization)
        shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
        resized = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        found = predict_tiled(resized, self._predict_uint8, min(self.config.input_size), overlap, on_tile)
        return found[: self.config.max_detections].resized(image.shape[:2])  # the limit is per image, not per tile

    def predict_batch(self, images: Sequence[ImageInput], tile: Optional[int] = None, overlap: int = 64,
                      batch_size: int = 8, progress: bool = False) -> List[Instances]:
        """Segment several images; results in input order. The fast backends run up to
        ``batch_size`` images (those not tiled) through the network together."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        results: List[Optional[Instances]] = [None] * len(images)
        bar = tqdm(total=len(images), desc="segmenting", unit="img", disable=not progress)
        for start in range(0, len(images), batch_size):
            arrays = [self._load(image) for image in images[start : start + batch_size]]
            whole = []
            for offset, array in enumerate(arrays):
                if (self.pipeline is None or tile is not None or max(array.shape[:2]) > self.auto_tile_above
                        or self._always_zooms()):
                    results[start + offset] = self.predict(array, tile, overlap)
                else:
                    whole.append(offset)
            if whole:
                prepared = [self.stage_timer("preprocess", self._prepare, arrays[i]) for i in whole]
                batch = torch.cat([p[0] for p in prepared])
                with self._lock:
                    found = self._predict_fast(batch.to(self.device), [p[1] for p in prepared])
                for offset, instances in zip(whole, found):
                    results[start + offset] = self._finish(self._zoom(arrays[offset], instances, overlap))
            bar.update(len(arrays))
        bar.close()
        return results  # type: ignore[return-value]

    def calibrate(self, images: Sequence[ImageInput]) -> "Predictor":
        """Set ``precision="int8"``'s activation ranges from ``images`` (paths or arrays;
        a handful typical of the experiment) instead of the default synthetic images.
        Returns the predictor."""
        images = _check_calibration(self.config, images)
        pipeline = build_fast_pipeline(self.detector, self.segmenter, self.config, self.device, self.backend, images)
        with self._lock:
            self.pipeline, self.calibration_images = pipeline, images
        return self

    def stream(self, frames: Iterable[ImageInput], max_queue: int = 4, drop_oldest: bool = False) -> FrameStream:
        """Segment a sequence of frames (a live feed, a video, a folder) with decoding and
        pre-processing overlapped with inference in a background thread.

        Returns an iterator of :class:`Instances` in input order (frames discarded under
        ``drop_oldest`` are skipped); ``.stats.summary()`` gives latency and FPS. Frames are
        segmented whole at zoom 1 (no tiling, zoom or diameter: the same cost for every frame).
        """
        return FrameStream(frames, self._prepare, lambda batch, size: self._finish(self._infer(batch, size)),
                           max_queue, drop_oldest, pin_memory=self.device.type == "cuda")

    @staticmethod
    def _load(image: ImageInput) -> np.ndarray:
        return read_image(image) if isinstance(image, (str, os.PathLike)) else image

    def _prepare(self, image: ImageInput) -> Tuple[torch.Tensor, Tuple[int, int]]:
        return preprocess(self._load(image), self.config.input_size, self.config.normalization)

    def _predict_array(self, array: np.ndarray) -> Instances:
        return self._infer(*self.stage_timer("preprocess", self._prepare, array))

    def _predict_uint8(self, tile: np.ndarray) -> Instances:
        """Segment a tile of an image already converted to 8-bit as a whole (so that every
        tile has the same contrast; per tile only the channel layout becomes BGR)."""
        return self._infer(*self.stage_timer("preprocess", preprocess, tile, self.config.input_size, ALREADY_8BIT))

    def _infer(self, batch: torch.Tensor, original_size: Tuple[int, int]) -> Instances:
        # One inference at a time: the models are shared, and parallel calls would only
        # oversubscribe the cores. Pre-processing and I/O stay outside the lock.
        with self._lock:
            batch = batch.to(self.device, non_blocking=True)
            if self.pipeline is None:
                return self._predict_reference(batch, original_size)
            return self._predict_fast(batch, [original_size])[0]

    def _predict_fast(self, batch: torch.Tensor, original_sizes: List[Tuple[int, int]]) -> List[Instances]:
        """The fast pipeline stage by stage (each through :attr:`stage_timer`): detector,
        detection and the batch's plan (one read of the device), mask stage, device paste."""
        timed, pipe = self.stage_timer, self.pipeline
        with torch.inference_mode():
            x, locs, conf, features = timed("detector", pipe.run_detector, batch)
            detections = timed("detect", pipe.detect, locs, conf)
            plan = timed("detect", pipe.plan, detections, original_sizes)  # the one read of the device
            probs, mask_sizes = timed("mask", pipe.segment, x, features, detections, plan)
            pasted = timed("paste", pipe.paste, detections, probs, mask_sizes, original_sizes, self.config.seg_thresh,
                           plan)
        return [Instances((boxes * self._box_scale(size)).numpy(), scores.numpy(), masks, labels.numpy())
                for (boxes, scores, labels, masks), size in zip(pasted, original_sizes)]

    def _box_scale(self, original_size: Tuple[int, int]) -> torch.Tensor:
        """Factors from network-input to original-image pixels, ``[4]`` for (y1, x1, y2, x2)."""
        height, width = self.config.input_size
        return torch.tensor([original_size[0] / height, original_size[1] / width] * 2)

    def _predict_reference(self, batch: torch.Tensor, original_size: Tuple[int, int]) -> Instances:
        """Spec §2-§6 for one image, stage by stage (each through :attr:`stage_timer`)."""
        timed, cfg = self.stage_timer, self.config
        with torch.inference_mode():
            locs, conf, features = timed("detector", self.detector, batch)
            detected = timed("detect", reference.detect, locs, conf, self.priors, cfg.conf_thresh, cfg.nms_thresh,
                             cfg.max_detections, cfg.max_candidates)
            boxes, scores, labels, probs = timed("mask", self._segment_reference, detected, features)
        return timed("paste", self._paste_reference, boxes, scores, labels, probs, original_size)

    def _segment_reference(self, detected: torch.Tensor, features: List[torch.Tensor]):
        """Spec §5 for the detections of one image: ``(boxes, scores, labels, probs)``."""
        boxes, scores, labels = reference.detections_of_image(detected[0].cpu())
        features = [self.segmenter.encode_c0(features[0])] + list(features[1:])
        return boxes, scores, labels, reference.segment(self.segmenter, features, boxes)

    def _paste_reference(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                         probs: List[Optional[torch.Tensor]], original_size: Tuple[int, int]) -> Instances:
        """Spec §6 for every detection with score >= conf_thresh (Detect already kept > only)."""
        cfg = self.config
        keep = (scores >= cfg.conf_thresh).nonzero().flatten().tolist()
        patches, origins = [], []
        for i in keep:
            dense = (np.zeros(original_size, bool) if probs[i] is None else reference.paste_mask(
                probs[i].float().cpu().numpy(), boxes[i], cfg.input_size, original_size, cfg.seg_thresh))
            patch, origin = tight_patch(dense)  # one dense mask at a time keeps memory bounded
            patches.append(patch)
            origins.append(origin)
        masks = PatchMasks(patches, np.array(origins, np.int64).reshape(-1, 2), original_size)
        return Instances((boxes[keep] * self._box_scale(original_size)).numpy(), scores[keep].numpy(), masks,
                         labels[keep].numpy())

    def export(self, path: Union[str, os.PathLike], format: str = "torchscript", **options) -> "os.PathLike":
        """Write this predictor's fast pipeline (its models, input size, thresholds and mode;
        independent of ``backend``) to ``path`` as ``format``: ``"torchscript"`` (``.pt``) or
        ``"aoti"`` (``.pt2``, the static fast mode as one graph; ``batch_size=``, ``examples=``
        or ``shape_budgets=``), both the whole pipeline (``box_budget=``), or ``"tensorrt"``
        (the detector); written atomically. Inputs are ``[B,3,H,W]`` network inputs, see
        :mod:`ancis_fast.export` for each format's outputs and :func:`ancis_fast.export.load_exported`."""
        from .export import export_predictor

        return export_predictor(self, path, format, **options)


def build_fast_pipeline(detector: nn.Module, segmenter: nn.Module, config: PredictorConfig, device: torch.device,
                        backend: str = "eager", calibration: Optional[Sequence["ImageInput"]] = None) -> FastPipeline:
    """The :class:`FastPipeline` of ``config`` on ``device``, turned into ``backend`` (one of
    the fast backends) at ``config.precision``; ``calibration`` images set int8's activation
    ranges (default: seeded synthetic images)."""
    int8 = config.precision == INT8
    pipeline = FastPipeline(
        detector, segmenter, config.input_size, config.conf_thresh, config.nms_thresh, config.mode,
        pre_nms_top_k=config.max_candidates, max_det=config.max_detections, channels_last=True,
        scripted=backend == "torchscript" and not int8, prior_height=config.prior_height,
        crop_sizes=config.crop_sizes,
    ).to(device)
    inputs = None
    if int8:
        from .backends.quantize import calibration_inputs

        inputs = (calibration_inputs(config.input_size, config.normalization) if calibration is None else
                  [preprocess(Predictor._load(image), config.input_size, config.normalization)[0]
                   for image in calibration])
    return configure_pipeline(pipeline, backend, config.precision, device, calibration=inputs)


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


def _untimed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    """The default :attr:`Predictor.stage_timer`: just run the stage."""
    return fn(*args)
