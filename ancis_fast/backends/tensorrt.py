"""TensorRT: the detector, or the whole static pipeline, compiled by Torch-TensorRT; engines
cached on disk.

- ``backend="tensorrt"`` (:func:`tensorrt_detector`): the BN-folded detector (the whole-image
  network: ~all of the FLOPs) becomes an engine for a batch range; detection and the mask
  stage stay in PyTorch, planned per batch like ``eager``.
- ``export --format tensorrt`` (:func:`tensorrt_pipeline`, written by
  :func:`ancis_fast.export.export_tensorrt`): the whole
  static fast pipeline (:class:`~ancis_fast.pipeline.fast.FastCore` with fixed boxes per crop
  shape, as ``--format aoti``) exported with ``torch.export`` and compiled by
  ``torch_tensorrt.dynamo.compile``: detector and mask decoder become TensorRT engines, the
  native ``ancis`` operators (detection, crops) stay in PyTorch (``torch_executed_ops``).

The engine is built with ``torch_tensorrt.compile(..., ir="dynamo")`` for a batch range
(min, opt, max) at a fixed input size and saved with ``torch_tensorrt.save(...,
output_format="exported_program")`` under a key of everything the engine depends on (weights,
shapes, precision, torch / Torch-TensorRT / TensorRT versions, GPU), so a later
``Predictor(backend="tensorrt")`` loads it in seconds instead of building for minutes.
Cache folder: ``$ANCIS_FAST_TENSORRT_CACHE`` or ``~/.cache/ancis_fast/tensorrt``.

Needs an NVIDIA GPU and ``pip install .[tensorrt]`` (``torch-tensorrt`` + ``tensorrt``
matching the installed torch).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..io.writers import atomic_path
from ..pipeline.fast import check_static, export_program
from .precision import check_precision

CACHE_ENV = "ANCIS_FAST_TENSORRT_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/ancis_fast/tensorrt")
#: (min, opt, max) batch sizes of the engine: single images are the common case, and
#: ``predict_batch``'s default batch is 8; larger batches run in chunks of ``max``
DEFAULT_BATCH_RANGE = (1, 1, 8)
#: the native ``ancis`` operators: forced to run in PyTorch should a graph contain them
NATIVE_OPS = frozenset(f"torch.ops.ancis.{name}.default" for name in (
    "decode", "detect", "nms", "batched_nms", "crop_and_resize", "paste_masks", "paste_labels"))
BatchRange = Tuple[int, int, int]


class TensorRTUnavailableError(ImportError):
    """``torch_tensorrt`` cannot be imported."""


def import_torch_tensorrt() -> ModuleType:
    """``torch_tensorrt``, or a :class:`TensorRTUnavailableError` saying how to install it."""
    try:
        import torch_tensorrt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            f"backend='tensorrt' needs the torch_tensorrt package ({exc}): `pip install .[tensorrt]` "
            f"(torch-tensorrt and tensorrt matching torch {torch.__version__}) on a machine with an NVIDIA GPU; "
            f"otherwise use backend='compile' or 'eager'") from exc
    return torch_tensorrt


def cache_dir(path: Union[str, os.PathLike, None] = None) -> Path:
    """The engine cache folder: ``path``, else ``$ANCIS_FAST_TENSORRT_CACHE``, else the default."""
    return Path(path or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def check_batch_range(batch_range: Sequence[int]) -> BatchRange:
    """``(min, opt, max)`` with ``1 <= min <= opt <= max``, else ``ValueError``."""
    values = tuple(int(b) for b in batch_range)
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise ValueError(f"batch_range={tuple(batch_range)}; expected (min, opt, max) with 1 <= min <= opt <= max")
    return values  # type: ignore[return-value]


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def runtime_versions() -> Dict[str, str]:
    """Versions an engine is only valid for: torch, torch_tensorrt and TensorRT."""
    versions = {"torch": torch.__version__}
    for package in ("torch_tensorrt", "tensorrt"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "missing"
    return versions


def gpu_name(device: torch.device) -> str:
    """The GPU's name and compute capability (engines are built for one GPU model)."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"


def cache_key(weights: str, input_size: Sequence[int], batch_range: Sequence[int], precision: str,
              versions: Mapping[str, str], gpu: str, settings: Optional[Mapping[str, Any]] = None) -> str:
    """Hex key of an engine: changes when any of the things it was built for changes
    (``settings``: anything else the graph depends on, e.g. a pipeline's thresholds and budgets)."""
    fields = {"weights": weights, "input_size": [int(s) for s in input_size],
              "batch_range": [int(b) for b in batch_range], "precision": precision,
              "versions": dict(sorted(versions.items())), "gpu": gpu}
    if settings:
        fields["settings"] = dict(settings)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def input_spec(torch_tensorrt: ModuleType, input_size: Sequence[int], batch_range: Sequence[int],
               dtype: torch.dtype) -> Any:
    """``torch_tensorrt.Input`` of the image batch ``[B, 3, H, W]``, B in ``batch_range``."""
    low, opt, high = check_batch_range(batch_range)
    height, width = input_size
    return torch_tensorrt.Input(min_shape=(low, 3, height, width), opt_shape=(opt, 3, height, width),
                                max_shape=(high, 3, height, width), dtype=dtype, name="x")


class DetectorCore(nn.Module):
    """What the engine computes: ``x [B,3,H,W]`` -> ``(locs, conf, c1, c2, a3, a4)``.

    The detector's feature list starts with its own input ``x``; an engine output that is an
    input is avoided, and the list is flattened for ``torch.export``.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        locs, conf, features = self.detector(x)
        return locs, conf, features[1], features[2], features[3], features[4]


class TensorRTDetector(nn.Module):
    """The engine behind the detector's interface: ``x [B,3,H,W]`` fp32 (any B: batches
    above the engine's maximum run in chunks) -> ``locs, conf, [x, c1, c2, a3, a4]``, fp32.

    ``path`` is the engine file (an exported program, ``torch_tensorrt.load(path).module()``).
    """

    def __init__(self, engine: nn.Module, dtype: torch.dtype, max_batch: int, path: Path):
        super().__init__()
        self.engine, self.dtype, self.max_batch, self.path = engine, dtype, max_batch, path

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        chunks = [self.engine(part.to(self.dtype).contiguous()) for part in x.split(self.max_batch)]
        outputs = [torch.cat([chunk[i] for chunk in chunks]).float() for i in range(len(chunks[0]))]
        return outputs[0], outputs[1], [x] + outputs[2:]


def _as_module(loaded: Any) -> nn.Module:
    """``torch_tensorrt.load`` gives an ExportedProgram (call its ``.module()``)."""
    return loaded if isinstance(loaded, nn.Module) else loaded.module()


def _build(torch_tensorrt: ModuleType, core: nn.Module, spec: Any, dtype: torch.dtype, path: Path) -> nn.Module:
    """Compile ``core`` and save it to ``path`` atomically (temp file, then rename)."""
    engine = torch_tensorrt.compile(
        core, ir="dynamo", inputs=[spec],
        # TensorRT >= 10 is strongly typed: the weights' and inputs' dtype decide; older
        # weak-typed versions read enabled_precisions
        enabled_precisions={dtype},
        torch_executed_ops=set(NATIVE_OPS),
    )
    _save(torch_tensorrt, engine, path, [spec])
    return engine


def _save(torch_tensorrt: ModuleType, engine: nn.Module, path: Path, arg_inputs: List[Any]) -> None:
    """``torch_tensorrt.save`` as an exported program, atomically."""
    with atomic_path(path) as tmp:
        torch_tensorrt.save(engine, str(tmp), output_format="exported_program", arg_inputs=arg_inputs, retrace=True)


def require_cuda(device: torch.device) -> None:
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"backend='tensorrt' on device={str(device)!r}: TensorRT runs on NVIDIA GPUs only; "
                         f"use device='cuda' on a machine with one, or backend='compile' or 'eager' here")


def tensorrt_detector(detector: nn.Module, input_size: Sequence[int], device: Union[str, torch.device],
                      precision: str = "fp32", batch_range: Sequence[int] = DEFAULT_BATCH_RANGE,
                      cache: Union[str, os.PathLike, None] = None) -> TensorRTDetector:
    """A TensorRT engine of ``detector`` (already BN-folded: see
    :func:`~ancis_fast.backends.optimize.optimize_for_inference`) for ``[B, 3, *input_size]``
    images, B in ``batch_range`` = (min, opt, max), running in ``precision``.

    Loads the engine from the cache folder (see :func:`cache_dir`) when one was built for
    the same weights, shapes, precision, versions and GPU; else builds and caches it.
    ``detector``'s weights are cast to the precision in place.
    """
    device = torch.device(device)
    require_cuda(device)
    torch_tensorrt = import_torch_tensorrt()
    dtype, batch_range = check_precision(precision), check_batch_range(batch_range)
    key = cache_key(weights_digest(detector), input_size, batch_range, precision, runtime_versions(), gpu_name(device))
    path = cache_dir(cache) / f"detector-{key[:32]}.ep"
    core = DetectorCore(detector.to(device, dtype).eval())
    spec = input_spec(torch_tensorrt, input_size, batch_range, dtype)
    engine = _load_cached(torch_tensorrt, path)
    if engine is None:
        engine = _build(torch_tensorrt, core, spec, dtype, path)
    return TensorRTDetector(engine, dtype, batch_range[2], path)


def _load_cached(torch_tensorrt: ModuleType, path: Path) -> Optional[nn.Module]:
    if not path.exists():
        return None
    try:
        return _as_module(torch_tensorrt.load(str(path)))
    except Exception as exc:  # a truncated or incompatible file is rebuilt, not fatal
        warnings.warn(f"ignoring the cached TensorRT engine {path} ({exc}); rebuilding it")
        return None


def tensorrt_pipeline(core: nn.Module, example: Tensor, precision: str = "fp32",
                      cache: Union[str, os.PathLike, None] = None) -> Tuple[nn.Module, Path]:
    """The whole static pipeline ``core`` (a fast-mode
    :class:`~ancis_fast.pipeline.fast.FastCore` with fixed ``shape_budgets``, its networks
    prepared at ``precision`` by the backend registry) compiled by Torch-TensorRT for inputs
    shaped like ``example [B,3,H,W]`` fp32: ``torch.export`` (strict), then
    ``torch_tensorrt.dynamo.compile`` with the native operators left to PyTorch. Outputs as
    the module's (:data:`ancis_fast.export.OUTPUTS`). Cached like :func:`tensorrt_detector`;
    returns the module and its file."""
    device = example.device
    require_cuda(device)
    torch_tensorrt = import_torch_tensorrt()
    check_static(core, "a TensorRT pipeline")
    dtype = check_precision(precision)
    settings = {"batch": int(example.shape[0]), "box_budget": core.max_det, "shape_budgets": core.shape_budgets,
                "crop_sizes": core.crop_sizes, "thresholds": [core.conf_thresh, core.nms_thresh],
                "pre_nms_top_k": core.pre_nms_top_k}
    key = cache_key(weights_digest(core), core.input_size, [example.shape[0]] * 3, precision, runtime_versions(),
                    gpu_name(device), settings)
    path = cache_dir(cache) / f"pipeline-{key[:32]}.ep"
    engine = _load_cached(torch_tensorrt, path)
    if engine is None:
        engine = torch_tensorrt.dynamo.compile(export_program(core, example), arg_inputs=[example], enabled_precisions={dtype},
                                               torch_executed_ops=set(NATIVE_OPS), min_block_size=1)
        _save(torch_tensorrt, engine, path, [example])
    return engine, path
