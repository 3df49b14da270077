"""The backends: one registry that turns a detector and a mask network into the modules a
pipeline runs (:func:`build`). Predictor and export both go through it.

Every fast backend starts from the same inference rewrite (BN folded, fused attention,
channels-last weights: :func:`~ancis_fast.backends.optimize.optimize_for_inference`) at the
configured precision (:mod:`~ancis_fast.backends.precision`, :mod:`~ancis_fast.backends.quantize`),
then scripts, compiles or builds an engine. ``reference`` keeps the release's modules as they
are, for :class:`~ancis_fast.pipeline.reference.ReferencePipeline`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .optimize import optimize_for_inference
from .precision import INT8, CastDetector, CastSegmenter, check_precision, resolve_precision
from .torchscript import script

if TYPE_CHECKING:
    from ..config import PredictorConfig

Modules = Tuple[nn.Module, nn.Module]  # (detector, segmenter)


@dataclass(frozen=True)
class Backend:
    """One way to run the networks: ``prepare(detector, segmenter, config, device,
    calibration, **options)`` returns the ``(detector, segmenter)`` to run, on ``device``;
    ``static(config, device)``, where given, the compiler of the whole static pipeline
    (:data:`~ancis_fast.pipeline.fast.StaticCompiler`, or ``None`` for that config)."""

    name: str
    summary: str  # one line, for --help and README
    prepare: Callable[..., Modules]
    static: Optional[Callable[["PredictorConfig", torch.device], Optional[Callable]]] = None


def _reference(detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig", device: torch.device,
               calibration: Optional[List[Tensor]]) -> Modules:
    return detector.to(device).eval(), segmenter.to(device).eval()


def _eager(detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig", device: torch.device,
           calibration: Optional[List[Tensor]]) -> Modules:
    detector = optimize_for_inference(detector, channels_last=True).to(device).eval()
    # weights in the crops' layout: no per-call weight conversion
    segmenter = copy.deepcopy(segmenter).to(device).eval().to(memory_format=torch.channels_last)
    dtype = check_precision(config.precision)  # build() checked it for the device and backend
    if config.precision == INT8:
        from .quantize import quantize_trunk

        return quantize_trunk(detector, calibration), segmenter
    if dtype != torch.float32:
        return CastDetector(detector, dtype), CastSegmenter(segmenter, dtype)
    return detector, segmenter


def _torchscript(*args: Any) -> Modules:
    detector, segmenter = _eager(*args)
    return script(detector), script(segmenter)


def _compile(detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig", device: torch.device,
             calibration: Optional[List[Tensor]]) -> Modules:
    from .compile import CompiledDetector, CompiledSegmenter

    detector, segmenter = _eager(detector, segmenter, config, device, calibration)
    if _compile_static(config, device) is not None:  # replayed as CUDA graphs instead
        return detector, segmenter
    return CompiledDetector(detector, device), CompiledSegmenter(segmenter, device)


def _compile_static(config: "PredictorConfig", device: torch.device) -> Optional[Callable]:
    """On a GPU in fast mode: the whole static pipeline captured as a CUDA graph per batch
    size (:class:`~ancis_fast.backends.cudagraph.CudaGraphPipeline`; no launch overhead)."""
    if device.type != "cuda" or config.mode != "fast":
        return None
    from .cudagraph import CudaGraphPipeline

    return CudaGraphPipeline


def _tensorrt(detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig", device: torch.device,
              calibration: Optional[List[Tensor]], **options: Any) -> Modules:
    from .tensorrt import import_torch_tensorrt, require_cuda, tensorrt_detector

    if config.mode == "fast":  # the whole static pipeline becomes the engine (_tensorrt_static)
        require_cuda(device)
        import_torch_tensorrt()
        return _eager(detector, segmenter, config, device, calibration)
    fp32 = config.with_overrides(precision="fp32")  # the engine runs the detector at the precision itself
    folded, segmenter = _eager(detector, segmenter, fp32, device, calibration)
    dtype = check_precision(config.precision)
    if dtype != torch.float32:
        segmenter = CastSegmenter(segmenter, dtype)
    return tensorrt_detector(folded, config.input_size, device, config.precision, **options), segmenter


def _tensorrt_static(config: "PredictorConfig", device: torch.device) -> Optional[Callable]:
    if config.mode != "fast":
        return None
    from .tensorrt import tensorrt_pipeline

    return lambda core, example: tensorrt_pipeline(core, example, config.precision)[0]


#: every backend, by name; ``auto`` (see :data:`AUTO_BACKENDS`) picks one of them
REGISTRY: Dict[str, Backend] = {b.name: b for b in (
    Backend("reference", "spec-exact, one image and one box at a time (the yardstick; slowest)", _reference),
    Backend("eager", "the batched fast pipeline (pipeline.fast) in PyTorch", _eager),
    Backend("torchscript", "the same with scripted networks", _torchscript),
    Backend("compile", "the same with torch.compile'd networks (the first images compile for minutes); on a GPU "
                       "in fast mode the whole static pipeline replayed as CUDA graphs, one per batch size",
            _compile, _compile_static),
    Backend("tensorrt", "fast mode: the whole static pipeline as TensorRT engines, one per batch size; exact "
                        "mode: the detector (NVIDIA GPU, pip install .[tensorrt])", _tensorrt, _tensorrt_static),
)}
BACKENDS = tuple(REGISTRY)
AUTO = "auto"
#: what ``Predictor(backend=...)`` and ``--backend`` accept: ``auto`` resolves to one of BACKENDS
BACKEND_CHOICES = (AUTO,) + BACKENDS
#: ``auto`` per device type. Measured (docs/performance.md, "Which backend `auto` picks"): on
#: a CPU ``eager`` is as fast as ``torchscript`` without its scripting time; on a GPU
#: ``torchscript`` was the faster of the two. ``compile`` (minutes of compiling) and
#: ``tensorrt`` (extra install) are never chosen.
AUTO_BACKENDS = {"cpu": "eager", "cuda": "torchscript"}


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend``, or for ``"auto"`` the fast backend chosen for ``device``'s type
    (:data:`AUTO_BACKENDS`; ``eager`` on other devices)."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend={backend!r} is not available; choose one of {BACKEND_CHOICES}")
    return AUTO_BACKENDS.get(device.type, "eager") if backend == AUTO else backend


def static_compiler(name: str, config: "PredictorConfig", device: torch.device) -> Optional[Callable]:
    """Backend ``name``'s compiler of the whole static pipeline for ``config`` (see
    :meth:`~ancis_fast.pipeline.fast.FastPipeline.run`), or ``None`` when it has none."""
    backend = REGISTRY[resolve_backend(name, device)]
    return backend.static(config, device) if backend.static is not None else None


def build(name: str, detector: nn.Module, segmenter: nn.Module, config: "PredictorConfig", device: torch.device,
          calibration: Optional[Sequence[Any]] = None, **options: Any) -> Modules:
    """The ``(detector, segmenter)`` that backend ``name`` (or ``"auto"``) runs at
    ``config.precision`` on ``device``; the given modules are not changed (fast backends
    work on copies). ``calibration``: images (paths or arrays) that set int8's activation
    ranges (default: seeded synthetic images). ``options`` go to the backend (``tensorrt``:
    :func:`~ancis_fast.backends.tensorrt.tensorrt_detector`'s ``batch_range`` and ``cache``)."""
    name = resolve_backend(name, device)
    resolve_precision(config.precision, device, name)
    inputs = None
    if config.precision == INT8:
        from .quantize import calibration_set

        inputs = calibration_set(config, calibration)
    return REGISTRY[name].prepare(detector, segmenter, config, device, inputs, **options)
