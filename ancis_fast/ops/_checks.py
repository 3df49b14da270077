"""Input checks shared by the operator wrappers: the same ValueError on the native and the
fallback path, naming the bad input and its shape, dtype or device."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def tensor(x: object, name: str, op: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def floating(x: Tensor, name: str, op: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating tensor, got {x.dtype}")


def integral(x: Tensor, name: str, op: str) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{op}: {name} must be an integer tensor, got {x.dtype}")


def same_device(op: str, **tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"{op}: inputs are on different devices ({listing}); move them to one device")


def boxes(x: Tensor, op: str, name: str = "boxes") -> None:
    if x.dim() != 2 or x.shape[-1] != 4:
        raise ValueError(f"{op}: {name} must have shape [N, 4] (y1, x1, y2, x2), got {list(x.shape)}")


def size2(value: Sequence[int], name: str, op: str) -> tuple:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be two integers (h, w), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{op}: {name} must be positive, got ({h}, {w})")
    return h, w
