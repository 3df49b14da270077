"""Deployable files of a :class:`~ancis_fast.Predictor`'s fast pipeline.

Formats (all take the network input ``x [B,3,H,W]`` float32, BGR in [0, 1] at the model's
input size, as :func:`ancis_fast.pipeline.preprocess.preprocess` makes it):

- ``torchscript`` (``.pt``): the whole fast pipeline, :class:`~ancis_fast.pipeline.fast.FastCore`
  scripted: detector, fused detection and mask stage. ``forward(x)`` returns
  ``(boxes [K,4] (y1, x1, y2, x2) input pixels, scores [K], labels [K] int64,
  batch_idx [K] int64, probs [K,h,w], mask_sizes [K,2] int64)``. Loads in Python
  (:func:`load_exported`) and in C++ (``torch::jit::load``, ``csrc/tools/ancis_run.cpp``)
  once the ``ancis`` operator library is loaded (``import ancis_fast`` / ``libancis_ops``).
- ``aoti`` (``.pt2``, AOTInductor): **detector + fused detection only**, as
  :class:`DetectionModule`: ``forward(x)`` returns padded ``(boxes [B,M,4], scores [B,M],
  labels [B,M], counts [B])`` with ``M = max_det`` (see ``ops.detect_padded``); image ``b``'s
  detections are its first ``counts[b]`` rows. The mask stage groups boxes by crop size on the
  host (data-dependent shapes and Python control flow), which ``torch.export`` cannot trace;
  run it from the TorchScript file instead. The batch size is fixed at export time.
- ``tensorrt``: delegated to ``ancis_fast.backends.tensorrt.export_tensorrt`` when that
  module is available.

Every file records its settings (input size, thresholds, mode, ...) as JSON: the
TorchScript extra file ``ancis_config.json`` (the thresholds and input size are also module
attributes) or the AOTInductor package metadata key ``ancis_config``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple, Union

import torch
from torch import Tensor, nn

from .backends import torchscript
from .backends.precision import INT8
from .io.writers import atomic_path
from .pipeline.fast import FastCore, default_buckets

if TYPE_CHECKING:
    from .predictor import Predictor

FORMATS = ("torchscript", "aoti", "tensorrt")
CONFIG_KEY = "ancis_config.json"  # TorchScript extra file; AOTInductor metadata key "ancis_config"
FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


class ExportUnavailable(RuntimeError):
    """The requested export format cannot be produced in this environment."""


def export_config(predictor: "Predictor", fmt: str) -> Dict[str, Any]:
    """The settings a loader needs, as stored in an exported file."""
    cfg = predictor.config
    outputs = (["boxes", "scores", "labels", "batch_idx", "probs", "mask_sizes"] if fmt == "torchscript"
               else ["boxes", "scores", "labels", "counts"])
    return {
        "format": fmt, "format_version": FORMAT_VERSION, "torch": torch.__version__,
        "input_size": list(cfg.input_size), "conf_thresh": cfg.conf_thresh, "nms_thresh": cfg.nms_thresh,
        "seg_thresh": cfg.seg_thresh, "mode": cfg.mode, "prior_height": cfg.prior_height,
        "max_candidates": cfg.max_candidates, "max_detections": cfg.max_detections,
        "mask_buckets": list(cfg.mask_buckets or default_buckets(predictor.device)),
        "precision": getattr(cfg, "precision", "fp32"),
        "normalization": {"mode": cfg.normalization.mode, "percentiles": list(cfg.normalization.percentiles)},
        "box_order": "y1,x1,y2,x2", "outputs": outputs,
    }


def export_core(predictor: "Predictor") -> FastCore:
    """A :class:`FastCore` (BN-folded detector, eager modules) of ``predictor``'s models and
    settings on its device, whatever the predictor's own backend: an ``eager`` predictor's
    own pipeline (not built, nor int8-calibrated, a second time), else a fresh one."""
    from .predictor import build_fast_pipeline

    pipeline = predictor.pipeline if predictor.backend == "eager" else build_fast_pipeline(
        predictor.detector, predictor.segmenter, predictor.config, predictor.device,
        calibration=predictor.calibration_images)
    return pipeline.core().eval()


class DetectionModule(nn.Module):
    """Detector + fused detection of a :class:`FastCore` (the AOTInductor export's scope).

    ``forward(x [B,3,H,W])`` -> ``boxes [B,M,4]`` (y1, x1, y2, x2) input pixels,
    ``scores [B,M]``, ``labels [B,M]`` int64, ``counts [B]`` int64; rows past ``counts[b]``
    are zero.
    """

    def __init__(self, core: FastCore):
        super().__init__()
        self.core = core

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        _, locs, conf, _ = self.core.run_detector(x)
        return self.core.detect_padded(locs, conf)


def _require_native(fmt: str) -> None:
    from .ops import _native

    if not _native.available():
        raise ExportUnavailable(f"--format {fmt} needs the compiled ancis operators "
                                f"(the exported file calls torch.ops.ancis.*): {_native.reason()}")


def export_torchscript(predictor: "Predictor", path: PathLike) -> Path:
    """Script the whole fast pipeline (:class:`FastCore`) and save it atomically to ``path``."""
    _require_native("torchscript")
    module = torchscript.script(export_core(predictor))
    config = json.dumps(export_config(predictor, "torchscript"))
    with atomic_path(path) as tmp:
        torchscript.save(module, tmp, {CONFIG_KEY: config})
    return Path(path)


def export_aoti(predictor: "Predictor", path: PathLike, batch_size: int = 1) -> Path:
    """Compile detector + fused detection (:class:`DetectionModule`) with AOTInductor into
    the package ``path`` (``.pt2``) for inputs ``[batch_size, 3, H, W]``. Takes minutes on a CPU."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"AOTInductor packages must end in .pt2, got {str(path)!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    _require_native("aoti")
    if predictor.config.precision == INT8:
        raise ExportUnavailable("precision='int8' exports as --format torchscript only: torch.export does not "
                                "trace torch.ao's quantized tensors")
    module = DetectionModule(export_core(predictor)).eval()
    example = torch.zeros((batch_size, 3, *predictor.config.input_size), device=predictor.device)
    with torch.no_grad():
        program = torch.export.export(module, (example,))
    metadata = {"ancis_config": json.dumps(export_config(predictor, "aoti"))}
    with atomic_path(path) as tmp:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp),
                                                 inductor_configs={"aot_inductor.metadata": metadata})
    return path


def export_tensorrt_file(predictor: "Predictor", path: PathLike, **options: Any) -> Path:
    """Delegate to ``ancis_fast.backends.tensorrt.export_tensorrt(predictor, path, **options)``."""
    try:
        from .backends.tensorrt import export_tensorrt
    except (ImportError, AttributeError) as exc:
        raise ExportUnavailable(
            f"--format tensorrt is not available here ({type(exc).__name__}: {exc}); it needs "
            "ancis_fast.backends.tensorrt.export_tensorrt with torch_tensorrt and an NVIDIA GPU; "
            "use --format torchscript or aoti instead") from exc
    try:
        result = export_tensorrt(predictor, path, **options)
    except ImportError as exc:  # torch_tensorrt / TensorRT missing at call time
        raise ExportUnavailable(f"--format tensorrt: {exc}") from exc
    return Path(result) if result is not None else Path(path)


def export_predictor(predictor: "Predictor", path: PathLike, format: str = "torchscript", **options: Any) -> Path:
    """Write ``predictor``'s fast pipeline to ``path`` in ``format`` (see the module
    docstring for each format's scope and outputs); returns the path."""
    if format == "torchscript":
        return export_torchscript(predictor, path, **options)
    if format == "aoti":
        return export_aoti(predictor, path, **options)
    if format == "tensorrt":
        return export_tensorrt_file(predictor, path, **options)
    raise ValueError(f"format={format!r}; expected one of {FORMATS}")


@dataclass(frozen=True)
class ExportedModel:
    """A loaded export: ``module(x)`` as described for its format, and its settings."""

    module: Any
    config: Dict[str, Any]

    def __call__(self, x: Tensor):
        with torch.inference_mode():
            return self.module(x)


def load_exported(path: PathLike, device: Union[str, torch.device] = "cpu") -> ExportedModel:
    """Load a TorchScript (``.pt``) or AOTInductor (``.pt2``) export of :func:`export_predictor`
    with its settings (``config["input_size"]``, thresholds, mode, ...). The ``ancis``
    operators are loaded first (``import ancis_fast.ops``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    _require_native("torchscript" if path.suffix != ".pt2" else "aoti")
    if path.suffix == ".pt2":
        device = torch.device(device)
        index = (device.index or 0) if device.type == "cuda" else -1
        module = torch._inductor.aoti_load_package(str(path), device_index=index)
        text = module.get_metadata().get("ancis_config")
    else:
        extra = {CONFIG_KEY: ""}
        module = torchscript.load(path, device, extra)
        text = extra[CONFIG_KEY]
    if not text:
        raise ValueError(f"{path} has no {CONFIG_KEY}: not written by ancis_fast export; re-export it")
    return ExportedModel(module, json.loads(text))


def save_runner_input(x: Tensor, path: PathLike) -> Path:
    """Save a network input ``x [B,3,H,W]`` float32 for the C++ runner (``ancis_run``), which
    reads it with ``torch::jit::pickle_load`` (no OpenCV is needed on the C++ side)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"runner input must have shape [B, 3, H, W], got {list(x.shape)}")
    with atomic_path(path) as tmp:
        torch.save(x.detach().float().contiguous().cpu(), str(tmp))
    return Path(path)
