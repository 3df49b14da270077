"""TorchScript: the mission's deployable format (``torch.jit.script``)."""
from __future__ import annotations

import warnings

import torch
from torch import nn


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without its torch >= 2.10 deprecation warning (it still works
    and TorchScript stays our C++ deployment format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        return torch.jit.script(module)
