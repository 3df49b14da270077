"""Reduced precision for the fast backends: the networks run in fp16/bf16, the rest in fp32.

The detector and the mask network are wrapped, not changed: each wrapper casts its inputs to
the low-precision dtype and its outputs back to fp32, so that detection (decode, NMS), crop
geometry (box coordinates: bf16 would round a 400 px coordinate to 2 px) and mask pasting
see fp32 tensors exactly as at full precision. The wrappers are TorchScript-compatible.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import PRECISION_NAMES

#: the dtypes of :data:`~ancis_fast.config.PRECISION_NAMES` but int8
PRECISIONS: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: int8 (:mod:`ancis_fast.backends.quantize`): the detector trunk int8, everything else fp32
INT8 = "int8"
INT8_BACKENDS = ("eager", "torchscript")


def check_precision(precision: str) -> torch.dtype:
    """The dtype the networks' floating-point layers run in at ``precision`` (fp32 for
    ``"int8"``, whose int8 part is the detector trunk); ``ValueError`` for an unknown name."""
    if precision == INT8:
        return torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {PRECISION_NAMES}")
    return PRECISIONS[precision]


def resolve_precision(precision: str, device: torch.device, backend: str = "eager") -> torch.dtype:
    """The dtype ``precision`` runs in on ``device`` with ``backend``, or a ``ValueError``
    saying what to use instead."""
    dtype = check_precision(precision)
    if (dtype != torch.float32 or precision == INT8) and backend == "reference":
        raise ValueError(f"precision={precision!r} with backend='reference': the reference path is fp32 only; "
                         f"use precision='fp32' or a fast backend (eager, torchscript, compile, tensorrt)")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError(f"precision='fp16' on device={str(device)!r}: CPUs have no fast fp16 kernels; "
                         f"use precision='bf16' on the CPU, or fp16 on a GPU (device='cuda')")
    if precision == INT8:
        _check_int8(device, backend)
    return dtype


def _check_int8(device: torch.device, backend: str) -> None:
    from .quantize import int8_available

    if device.type != "cpu":
        raise ValueError(f"precision='int8' on device={str(device)!r}: the int8 path is for CPUs; "
                         f"use precision='fp16' on a GPU")
    if backend not in INT8_BACKENDS:
        raise ValueError(f"precision='int8' with backend={backend!r}: int8 runs with backend 'eager' or "
                         f"'torchscript'")
    available, why = int8_available()
    if not available:
        raise ValueError(f"precision='int8' is not available: {why}; use precision='fp32'")


class CastDetector(nn.Module):
    """Runs ``detector`` in ``dtype`` (its weights are cast in place).

    ``forward(x [B,3,H,W] fp32)`` returns ``locs``, ``conf`` and the features ``[x, c1..c4]``
    like the detector, all fp32 (``x`` is passed through uncast).
    """

    def __init__(self, detector: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.detector = detector.to(dtype)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        locs, conf, features = self.detector(x.to(self.dtype))
        return locs.float(), conf.float(), [x] + [f.float() for f in features[1:]]


class CastSegmenter(nn.Module):
    """Runs the mask network ``segmenter`` in ``dtype`` behind the same interface
    (``forward``, ``encode_c0``, ``decode_logits``, ``decode_stage``, ``head``), fp32 in and
    fp32 out."""

    def __init__(self, segmenter: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.segmenter = segmenter.to(dtype)
        self.dtype = dtype

    def forward(self, crops: List[Tensor]) -> Tensor:
        return self.segmenter([c.to(self.dtype) for c in crops]).float()

    @torch.jit.export
    def encode_c0(self, image: Tensor, inside: Optional[Tensor] = None) -> Tensor:
        low_inside = None if inside is None else inside.to(self.dtype)
        return self.segmenter.encode_c0(image.to(self.dtype), low_inside).float()

    @torch.jit.export
    def decode_logits(self, crops: List[Tensor]) -> Tensor:
        return self.segmenter.decode_logits([c.to(self.dtype) for c in crops]).float()

    @torch.jit.export
    def decode_stage(self, level: int, pre: Tensor, skip: Tensor) -> Tensor:
        return self.segmenter.decode_stage(level, pre.to(self.dtype), skip.to(self.dtype)).float()

    @torch.jit.export
    def head(self, state: Tensor) -> Tensor:
        return self.segmenter.head(state.to(self.dtype)).float()
