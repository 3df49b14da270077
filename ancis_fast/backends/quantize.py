"""int8 on the CPU (``precision="int8"``): the detector's ResNet trunk quantized with
``torch.ao`` (FX graph mode, post-training static, the ``x86`` engine's default qconfig:
per-channel int8 weights, uint8 activations with a reduced 7-bit range, so that the 16-bit
intermediate sums of CPUs without VNNI cannot saturate).

Only the trunk (conv1 .. layer3, about half of the detector's FLOPs and its best-understood
part) runs int8; the extra layers, self-attention, SSD heads, detection and the mask network
stay fp32. The answer changes slightly: opt-in, with its agreement measured next to its speed
(``benchmarks/fps.py --precision int8``, docs/performance.md). Activation ranges are
calibrated on synthetic images made by :mod:`ancis_fast.data.synthetic`
(:func:`calibration_inputs`), or on the user's own with :meth:`ancis_fast.Predictor.calibrate`.

``torch.ao.quantization`` is deprecated upstream in favour of ``torchao``'s PT2E flow (which
needs ``torch.compile`` and minutes of CPU compilation per input shape); its warnings are
silenced here, and ``int8_available`` says why when a torch lacks it (tests skip then).
"""
# No `from __future__ import annotations`: FX copies _Trunk.forward's annotations into the
# code it generates, which TorchScript must then read.
import contextlib
import copy
import warnings
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..models.detector import TRUNK_MODULES
from .torchscript import drop_stale_builtins

ENGINE = "x86"
CALIBRATION_SEED = 2718
CALIBRATION_IMAGES = 4


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide ``torch.ao.quantization``'s deprecation warnings (it still works)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated.*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        yield


def int8_available() -> Tuple[bool, str]:
    """Whether this torch can run the int8 trunk, and why not."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        return False, (f"this torch build has no {ENGINE!r} quantized engine "
                       f"(engines: {torch.backends.quantized.supported_engines})")
    try:
        _import_fx()
    except ImportError as exc:  # removed in a future torch
        return False, f"torch.ao.quantization's FX API is missing from torch {torch.__version__} ({exc})"
    return True, ""


def _import_fx():
    """``prepare_fx``, ``convert_fx`` and ``get_default_qconfig_mapping``, imported without
    leaving stale TorchScript builtins behind (see
    :func:`~ancis_fast.backends.torchscript.stale_builtins`)."""
    with _quiet():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    drop_stale_builtins()
    return prepare_fx, convert_fx, get_default_qconfig_mapping


class _Trunk(nn.Module):
    """The detector's :meth:`trunk` as a module of its own (what FX traces)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.detector.trunk(x)


class Int8TrunkDetector(nn.Module):
    """``detector`` whose trunk runs int8; same interface as the detector:
    ``forward(x [B,3,H,W] fp32)`` -> ``locs``, ``conf``, features ``[x, c1, c2, a3, a4]``, all fp32."""

    def __init__(self, detector: nn.Module, trunk: nn.Module):
        super().__init__()
        self.detector = detector
        self.trunk = trunk

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        c1, c2, c3, c4 = self.trunk(x)
        return self.detector.heads(x, c1, c2, c3, c4)


def quantize_trunk(detector: nn.Module, calibration: Sequence[Tensor]) -> Int8TrunkDetector:
    """An :class:`Int8TrunkDetector` of ``detector`` (an fp32 CPU detector, e.g. the fast
    pipeline's BN-folded one; it is not modified) whose activation ranges are observed on
    ``calibration``: network inputs ``[B,3,H,W]`` as :func:`~ancis_fast.pipeline.preprocess.preprocess`
    makes them, at the input size the model will run at."""
    available, why = int8_available()
    if not available:
        raise RuntimeError(f"precision='int8' is not available: {why}; use precision='fp32'")
    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one input image")
    if any(p.device.type != "cpu" for p in detector.parameters()):
        raise ValueError("precision='int8' runs on the CPU only; on a GPU use precision='fp16'")
    prepare_fx, convert_fx, get_default_qconfig_mapping = _import_fx()

    torch.backends.quantized.engine = ENGINE  # the packed weights are made for this engine
    with _quiet():
        prepared = prepare_fx(_Trunk(copy.deepcopy(detector)).eval(), get_default_qconfig_mapping(ENGINE),
                              (calibration[0],))
        with torch.inference_mode():
            for x in calibration:
                prepared(x)
        trunk = convert_fx(prepared)
    heads = copy.deepcopy(detector)
    for name in TRUNK_MODULES:  # the int8 trunk replaces them: don't keep (or export) their fp32 weights
        setattr(heads, name, nn.Identity())
    return Int8TrunkDetector(heads, trunk)


def calibration_set(config, images: Optional[Sequence[Any]] = None) -> List[Tensor]:
    """Network inputs ``[1,3,H,W]`` at ``config``'s input size and normalization that set
    int8's activation ranges: of ``images`` (paths or arrays), else :func:`calibration_inputs`."""
    if images is None:
        return calibration_inputs(config.input_size, config.normalization)
    from ..io.readers import load_image
    from ..pipeline.preprocess import preprocess

    return [preprocess(load_image(image), config.input_size, config.normalization)[0] for image in images]


def calibration_inputs(input_size: Tuple[int, int], normalization=None, count: int = CALIBRATION_IMAGES) -> List[Tensor]:
    """``count`` network inputs ``[1,3,H,W]`` of seeded synthetic images, as varied as the
    generator makes them (density, nucleus size, bit depth, stain colour), at ``input_size``."""
    from ..data.synthetic import SynthConfig, generate
    from ..pipeline.preprocess import Normalization, preprocess

    norm = normalization or Normalization()
    config = SynthConfig(size=(max(input_size), max(input_size)))
    inputs = []
    for index in range(count):
        image = np.asarray(generate((CALIBRATION_SEED, index), config).image)
        inputs.append(preprocess(image, input_size, norm)[0])
    return inputs
