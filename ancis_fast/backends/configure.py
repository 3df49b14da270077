"""Turns a :class:`~ancis_fast.pipeline.fast.FastPipeline` into a given backend and precision
by replacing its ``detector`` / ``segmenter`` modules with wrappers (same interface)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from .precision import INT8, CastDetector, CastSegmenter, resolve_precision
from .torchscript import script

#: execution paths of :class:`~ancis_fast.Predictor`; all but ``reference`` run a FastPipeline
BACKENDS = ("reference", "eager", "torchscript", "compile", "tensorrt")
AUTO = "auto"
#: what ``Predictor(backend=...)`` and ``--backend`` accept: ``auto`` resolves to one of BACKENDS
BACKEND_CHOICES = (AUTO,) + BACKENDS
#: ``auto`` per device type. Measured (README, "Backends"): on a CPU ``eager`` is as fast as
#: ``torchscript`` without its scripting time; on a GPU ``torchscript`` was the faster of the
#: two. ``compile`` (minutes of compiling) and ``tensorrt`` (extra install) are never chosen.
AUTO_BACKENDS = {"cpu": "eager", "cuda": "torchscript"}


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend``, or for ``"auto"`` the fast backend chosen for ``device``'s type
    (:data:`AUTO_BACKENDS`; ``eager`` on other devices)."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend={backend!r} is not available; choose one of {BACKEND_CHOICES}")
    return AUTO_BACKENDS.get(device.type, "eager") if backend == AUTO else backend


def configure_pipeline(pipeline: nn.Module, backend: str, precision: str, device: torch.device,
                       tensorrt_options: Optional[Dict[str, Any]] = None,
                       calibration: Optional[Sequence[Tensor]] = None) -> nn.Module:
    """Apply ``precision`` (``fp32``/``fp16``/``bf16``/``int8``) and ``backend`` (``eager``,
    ``torchscript`` - the pipeline was built scripted, except for int8 -, ``compile``,
    ``tensorrt``) to ``pipeline`` in place; ``tensorrt_options`` go to
    :func:`~ancis_fast.backends.tensorrt.tensorrt_detector`; ``calibration`` (network inputs)
    sets int8's activation ranges (default: :func:`~ancis_fast.backends.quantize.calibration_inputs`).
    Returns ``pipeline``."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend={backend!r} has no fast pipeline; choose one of {BACKENDS[1:]}")
    dtype = resolve_precision(precision, device, backend)
    if precision == INT8:
        from .quantize import calibration_inputs, quantize_trunk

        pipeline.detector = quantize_trunk(pipeline.detector, calibration or calibration_inputs(pipeline.input_size))
        if backend == "torchscript":
            pipeline.detector = script(pipeline.detector)
        return pipeline
    low = dtype != torch.float32
    if backend == "tensorrt":
        from .tensorrt import tensorrt_detector

        pipeline.detector = tensorrt_detector(pipeline.detector, pipeline.input_size, device, precision,
                                              **(tensorrt_options or {}))
    elif low:
        pipeline.detector = CastDetector(pipeline.detector, dtype)
    if low:
        pipeline.segmenter = CastSegmenter(pipeline.segmenter, dtype)
    if backend == "torchscript" and low:
        pipeline.detector, pipeline.segmenter = script(pipeline.detector), script(pipeline.segmenter)
    if backend == "compile":
        from .compile import compile_pipeline

        compile_pipeline(pipeline, device)
    return pipeline
