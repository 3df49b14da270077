"""SSD box decoding (spec §4) as one native operator."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .. import boxes as _boxes
from . import _checks, _native

VARIANCES: Tuple[float, float] = _boxes.VARIANCES


def _check(locs: Tensor, priors: Tensor, variances: Sequence[float], op: str = "decode") -> None:
    _checks.tensor(locs, "locs", op)
    _checks.tensor(priors, "priors", op)
    if locs.dim() < 2 or locs.shape[-1] != 4:
        raise ValueError(f"{op}: locs must have shape [..., P, 4], got {list(locs.shape)}")
    if priors.dim() != 2 or priors.shape[1] != 4 or priors.shape[0] != locs.shape[-2]:
        raise ValueError(f"{op}: priors must have shape [{locs.shape[-2]}, 4] (cy, cx, h, w) to match locs "
                         f"{list(locs.shape)}, got {list(priors.shape)}")
    _checks.floating(locs, "locs", op)
    _checks.floating(priors, "priors", op)
    _checks.same_device(op, locs=locs, priors=priors)
    if len(variances) != 2:
        raise ValueError(f"{op}: variances must have 2 values, got {len(variances)}")


def decode(locs: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """Decode SSD regression outputs into boxes, bit-identical to :func:`ancis_fast.boxes.decode`.

    Args:
        locs: ``[B, P, 4]`` (or ``[..., P, 4]``) offsets ``(dy, dx, dh, dw)``, floating.
        priors: ``[P, 4]`` priors ``(cy, cx, h, w)`` in input pixels.
        variances: the SSD variances ``(centre, size)``.
    Returns:
        ``[B, P, 4]`` boxes ``(y1, x1, y2, x2)`` in input pixels, not clipped, in the dtype
        torch promotes ``locs`` and ``priors`` to.
    """
    _check(locs, priors, variances)
    if _native.use_native("decode", locs, priors):
        return torch.ops.ancis.decode(locs, priors, [float(v) for v in variances])
    return decode_torch(locs, priors, variances)


def decode_torch(locs: Tensor, priors: Tensor, variances: Sequence[float] = VARIANCES) -> Tensor:
    """Pure-torch fallback of :func:`decode` (same signature and results)."""
    return _boxes.decode(locs, priors, (float(variances[0]), float(variances[1])))
