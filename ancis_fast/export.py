"""Deployable files of a :class:`~ancis_fast.Predictor`'s fast pipeline.

Formats (all take the network input ``x [B,3,H,W]`` float32, BGR in [0, 1] at the model's
input size, as :func:`ancis_fast.pipeline.preprocess.preprocess` makes it), and all hold the
whole pipeline, :class:`~ancis_fast.pipeline.fast.FastCore`: detector, fused detection and
mask stage. ``forward(x)`` returns, padded to ``M = box_budget`` boxes per image (image
``b``'s detections are its first ``counts[b]`` rows, by descending score):
``(boxes [B,M,4] (y1, x1, y2, x2) input pixels, scores [B,M], labels [B,M] int64,
counts [B] int64, probs [B,M,h,w], mask_sizes [B,M,2] int64)``; box ``k``'s mask
probabilities are the top-left ``mask_sizes[b,k]`` of ``probs[b,k]`` (0: no mask), to be
pasted as spec §6 says (``ops.paste_masks`` / ``ops.paste_windows``).

- ``torchscript`` (``.pt``): scripted; in fast mode the boxes per crop shape are read from
  the data (one device read), exact mode plans its groups on the host. Loads in Python
  (:func:`load_exported`) and in C++ (``torch::jit::load``, ``csrc/tools/ancis_run.cpp``)
  once the ``ancis`` operator library is loaded (``import ancis_fast`` / ``libancis_ops``).
- ``aoti`` (``.pt2``, AOTInductor; fast mode): one static graph (``torch.export``, strict),
  fixed batch size and fixed boxes per crop shape (``shape_budgets``: by default measured on
  the example images with 2x headroom, see :func:`static_budgets`); a box past its shape's
  budget, or of a shape the examples never had, gets no mask (``mask_sizes`` 0). The C++
  runner loads it too.
- ``tensorrt`` (``.ep``, a Torch-TensorRT exported program; NVIDIA GPU): the static graph of
  ``aoti`` compiled by ``torch_tensorrt.dynamo.compile``, detector and mask decoder as TensorRT
  engines, the native operators in PyTorch (:func:`export_tensorrt`).

:data:`FORMATS` lists them (name, suffix, devices, options): the CLI, the suffix checks and
:func:`export_predictor` all read it.

Every file records its settings (input size, thresholds, mode, budgets, ...) as JSON: the
TorchScript extra file ``ancis_config.json`` (the thresholds and input size are also module
attributes) or the AOTInductor package metadata key ``ancis_config``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import backends
from .backends import torchscript
from .backends.precision import INT8
from .io.writers import atomic_path
from .pipeline.fast import FastCore, FastPipeline, export_program, static_budgets

if TYPE_CHECKING:
    from .predictor import Predictor

CONFIG_KEY = "ancis_config.json"  # TorchScript extra file; AOTInductor metadata key "ancis_config"
FORMAT_VERSION = 2  # 2: padded outputs [B, M, ...] with counts, whole pipeline in every format
OUTPUTS = ("boxes", "scores", "labels", "counts", "probs", "mask_sizes")
PathLike = Union[str, os.PathLike]


class ExportUnavailable(RuntimeError):
    """The requested export format cannot be produced in this environment."""


def export_config(predictor: "Predictor", fmt: str, core: FastCore) -> Dict[str, Any]:
    """The settings a loader needs, as stored in an exported file of ``core``."""
    return {**predictor.config.to_dict(), "format": fmt, "format_version": FORMAT_VERSION,
            "torch": torch.__version__, "box_budget": core.max_det, "shape_budgets": core.shape_budgets,
            "box_order": "y1,x1,y2,x2", "outputs": list(OUTPUTS)}


def export_core(predictor: "Predictor", box_budget: Optional[int] = None,
                shape_budgets: Optional[Sequence[int]] = None) -> FastCore:
    """A :class:`FastCore` (BN-folded detector, eager modules) of ``predictor``'s models and
    settings on its device, whatever the predictor's own backend (an ``eager`` predictor's
    own pipeline is not built, nor int8-calibrated, a second time), with at most
    ``box_budget`` boxes per image (default: ``max_detections``) and fixed ``shape_budgets``
    (default: read from the data)."""
    pipeline = predictor.pipeline
    if predictor.backend != "eager":
        modules = backends.build("eager", predictor.detector, predictor.segmenter, predictor.config,
                                 predictor.device, predictor.calibration_images)
        pipeline = FastPipeline.from_config(*modules, predictor.config, predictor.device)
    return pipeline.core(box_budget, shape_budgets).eval()


def _require_native(fmt: str) -> None:
    from .ops import _native

    if not _native.available():
        raise ExportUnavailable(f"--format {fmt} needs the compiled ancis operators "
                                f"(the exported file calls torch.ops.ancis.*): {_native.reason()}")


def export_torchscript(predictor: "Predictor", path: PathLike, box_budget: Optional[int] = None) -> Path:
    """Script the whole fast pipeline (:class:`FastCore`) and save it atomically to ``path``."""
    _require_native("torchscript")
    core = export_core(predictor, box_budget)
    module = torchscript.script(core)
    config = json.dumps(export_config(predictor, "torchscript", core))
    with atomic_path(path) as tmp:
        torchscript.save(module, tmp, {CONFIG_KEY: config})
    return Path(path)


def static_core(predictor: "Predictor", batch_size: int = 1, box_budget: Optional[int] = None,
                examples: Optional[Tensor] = None, shape_budgets: Optional[Sequence[int]] = None,
                fmt: str = "aoti") -> FastCore:
    """The whole static pipeline of ``predictor`` for batches of ``batch_size``: fast mode,
    ``shape_budgets`` as given, else :func:`static_budgets` of ``examples`` (network inputs;
    default: the bundled sample image); ``ValueError`` / :class:`ExportUnavailable` (naming
    ``fmt``) where the predictor's settings have no static graph."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected >= 1")
    _require_native(fmt)
    if predictor.config.precision == INT8:
        raise ExportUnavailable(f"precision='int8' exports as --format torchscript only, not {fmt}: torch.export "
                                "does not trace torch.ao's quantized tensors")
    if predictor.config.mode != "fast":
        raise ValueError(f"--format {fmt} exports the static fast mode; mode='exact' plans on the host "
                         "(use --format torchscript)")
    core = export_core(predictor, box_budget)
    if shape_budgets is None:
        examples = _sample_inputs(predictor) if examples is None else examples.to(predictor.device)
        shape_budgets = static_budgets(core, examples, batch_size)
    return core.core(shape_budgets=shape_budgets).eval()


def export_aoti(predictor: "Predictor", path: PathLike, batch_size: int = 1, box_budget: Optional[int] = None,
                examples: Optional[Tensor] = None, shape_budgets: Optional[Sequence[int]] = None) -> Path:
    """Compile the whole static pipeline (:func:`static_core`) with AOTInductor into the
    package ``path`` (``.pt2``) for inputs ``[batch_size, 3, H, W]``. Takes minutes on a CPU."""
    core = static_core(predictor, batch_size, box_budget, examples, shape_budgets, "aoti")
    program = export_program(core, static_input(predictor, batch_size))
    metadata = {"ancis_config": json.dumps(export_config(predictor, "aoti", core))}
    with atomic_path(path) as tmp:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp),
                                                 inductor_configs={"aot_inductor.metadata": metadata})
    return Path(path)


def static_input(predictor: "Predictor", batch_size: int) -> Tensor:
    """A zero network input ``[batch_size, 3, H, W]`` on the predictor's device (the shape a
    static graph is made for)."""
    return torch.zeros((batch_size, 3, *predictor.config.input_size), device=predictor.device)


def _sample_inputs(predictor: "Predictor") -> Tensor:
    """The bundled sample image as a network input ``[1,3,H,W]`` on the predictor's device."""
    from .io.readers import read_image
    from .models.weights import ASSETS
    from .pipeline.preprocess import preprocess

    image = read_image(ASSETS / "sample.png")
    return preprocess(image, predictor.config.input_size, predictor.config.normalization)[0].to(predictor.device)


def export_tensorrt(predictor: "Predictor", path: PathLike, batch_size: int = 1, box_budget: Optional[int] = None,
                    examples: Optional[Tensor] = None, shape_budgets: Optional[Sequence[int]] = None,
                    cache: Union[str, os.PathLike, None] = None) -> Path:
    """Write the TensorRT-compiled whole static pipeline of ``predictor`` to ``path``.

    The pipeline and its budgets are those of ``aoti`` (:func:`static_core`: fixed
    ``batch_size``, boxes per crop shape from ``examples`` with 2x headroom unless
    ``shape_budgets`` are given), compiled by
    :func:`ancis_fast.backends.tensorrt.tensorrt_pipeline` on the predictor's device (an
    NVIDIA GPU) at its precision, through the engine cache (``cache``). The file is a
    Torch-TensorRT exported program: ``torch_tensorrt.load(path).module()(x)`` with ``x
    [batch_size, 3, H, W]`` float32 gives :data:`OUTPUTS`.
    """
    from .backends.tensorrt import import_torch_tensorrt, require_cuda, tensorrt_pipeline

    require_cuda(predictor.device)
    try:
        import_torch_tensorrt()
    except ImportError as exc:
        raise ExportUnavailable(f"--format tensorrt: {exc}") from exc
    core = static_core(predictor, batch_size, box_budget, examples, shape_budgets, "tensorrt")
    _, cached = tensorrt_pipeline(core, static_input(predictor, batch_size), predictor.config.precision, cache)
    with atomic_path(path) as tmp:
        shutil.copyfile(cached, tmp)
    return Path(path)


@dataclass(frozen=True)
class ExportFormat:
    """One export format: ``write(predictor, path, **options)`` makes the file."""

    name: str
    suffix: str  # the usual file suffix; required when ``suffix_required``
    suffix_required: bool
    devices: Tuple[str, ...]  # where it is made and runs
    options: Tuple[str, ...]  # keyword options of ``write``
    summary: str  # one line, for --help
    write: Callable[..., Path]


#: every export format, by name (as Ultralytics' ``export_formats()``)
FORMATS: Dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("torchscript", ".pt", False, ("cpu", "cuda"), ("box_budget",),
                 "scripted whole pipeline; fast mode reads its boxes per crop shape from the data", export_torchscript),
    ExportFormat("aoti", ".pt2", True, ("cpu", "cuda"), ("batch_size", "box_budget", "examples", "shape_budgets"),
                 "AOTInductor, one static graph (fast mode): fixed batch size and boxes per crop shape",
                 export_aoti),
    ExportFormat("tensorrt", ".ep", False, ("cuda",), ("batch_size", "box_budget", "examples", "shape_budgets", "cache"),
                 "Torch-TensorRT, the same static graph as aoti with TensorRT engines for detector and mask "
                 "decoder (NVIDIA GPU + pip install .[tensorrt])", export_tensorrt),
)}


def export_predictor(predictor: "Predictor", path: PathLike, format: str = "torchscript", **options: Any) -> Path:
    """Write ``predictor``'s whole fast pipeline (its models and settings, whatever its
    ``backend``) to ``path`` in ``format``, one of :data:`FORMATS` (``"torchscript"``,
    ``"aoti"``, ``"tensorrt"``; each one's suffix and keyword ``options``, e.g.
    ``box_budget=``, ``batch_size=``, ``examples=``, are listed there), atomically; returns
    the path. See the module docstring for each format's scope and outputs, and
    :func:`load_exported`."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; expected one of {tuple(FORMATS)}")
    spec = FORMATS[format]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TypeError(f"format={format!r} takes the options {spec.options}, not {unknown}")
    if spec.suffix_required and Path(path).suffix != spec.suffix:
        raise ValueError(f"{format} files must end in {spec.suffix}, got {str(path)!r}")
    return spec.write(predictor, path, **options)


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
