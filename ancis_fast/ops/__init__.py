"""Native post-processing operators of ANCIS, boxes ``(y1, x1, y2, x2)``.

Each operator is registered once in the ``ancis`` torch library (``torch.ops.ancis.<name>``,
callable from TorchScript and traceable by torch.compile / torch.export through its fake
kernel) with CPU and CUDA kernels in ``csrc/``. Every function here validates its inputs,
runs the native kernel when the compiled library is available, and otherwise falls back to a
pure-torch implementation with the same signature and results (warning once).
"""
from __future__ import annotations

from ._native import available as native_available
from .crop_and_resize import crop_and_resize, level_crop_bounds
from .decode import decode
from .detect import Detections, detect, detect_padded
from .nms import batched_nms, nms
from .paste_masks import paste_extents, paste_masks, paste_windows

__all__ = [
    "native_available", "decode", "detect", "detect_padded", "Detections", "nms", "batched_nms",
    "crop_and_resize", "level_crop_bounds", "paste_masks", "paste_windows",
    "paste_extents",
]

# Load the library now (silently; the first fallback warns) so that torch.ops.ancis.* exist
# for TorchScript and torch.export users right after `import ancis_fast.ops`.
native_available()
