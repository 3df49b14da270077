"""TorchScript: the mission's deployable format (``torch.jit.script``)."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Dict, Iterator, Optional, Union

import torch
from torch import nn


@contextlib.contextmanager
def _quiet(call: str) -> Iterator[None]:
    """Hide torch >= 2.10's deprecation warning of ``torch.jit.<call>`` (it still works and
    TorchScript stays our C++ deployment format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=rf"`torch\.jit\.{call}` is deprecated", category=FutureWarning)
        yield


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without its deprecation warning."""
    with _quiet("script"):
        return torch.jit.script(module)


def save(module: torch.jit.ScriptModule, path: Union[str, os.PathLike],
         extra_files: Optional[Dict[str, str]] = None) -> None:
    """``torch.jit.save`` (with ``_extra_files``) without its deprecation warning."""
    with _quiet("save"):
        torch.jit.save(module, str(path), _extra_files=extra_files or {})


def load(path: Union[str, os.PathLike], map_location=None,
         extra_files: Optional[Dict[str, str]] = None) -> torch.jit.ScriptModule:
    """``torch.jit.load`` without its deprecation warning; fills ``extra_files``' values."""
    with _quiet("load"):
        return torch.jit.load(str(path), map_location=map_location,
                              _extra_files=extra_files if extra_files is not None else {})
