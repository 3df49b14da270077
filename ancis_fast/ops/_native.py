"""Loads the compiled operator library ``ancis_fast._C`` once.

Importing this module never fails. When the library is missing, cannot be loaded (for
example built against another torch) or reports another torch version, :func:`available`
is False and every operator falls back to its pure-torch implementation, with one warning
for the whole process.
"""
from __future__ import annotations

import importlib.util
import threading
import warnings
from typing import Optional

import torch
from torch import Tensor

_lock = threading.Lock()
_loaded: Optional[bool] = None
_reason = ""
_has_cuda = False
_warned: set = set()


def _torch_base_version(version: str) -> str:
    return version.split("+")[0]


def _load() -> bool:
    global _reason, _has_cuda
    spec = importlib.util.find_spec("ancis_fast._C")
    if spec is None or not spec.origin:
        _reason = "the extension ancis_fast._C is not built (pip install --no-build-isolation -e .)"
        return False
    try:
        torch.ops.load_library(spec.origin)
        info = dict(item.split("=", 1) for item in torch.ops.ancis._build_info().split(";"))
    except Exception as exc:  # missing symbols of another torch build, a broken file, ...
        _reason = f"{spec.origin} failed to load ({type(exc).__name__}: {exc})"
        return False
    built_for = info.get("torch", "?")
    if _torch_base_version(built_for) != _torch_base_version(torch.__version__):
        _reason = f"{spec.origin} was built for torch {built_for}, this is torch {torch.__version__}; rebuild it"
        return False
    _has_cuda = info.get("cuda") == "1"
    return True


def available() -> bool:
    """True when the compiled operators are loaded and match this torch."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load()
                if _loaded:
                    from . import _fake  # noqa: F401  (registers the fake kernels once)
    return _loaded


def has_cuda() -> bool:
    """True when the loaded library carries CUDA kernels."""
    return available() and _has_cuda


def reason() -> str:
    """Why the native operators are unavailable ('' when they are available)."""
    available()
    return _reason


def _warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def tracing() -> bool:
    """Whether the caller is being scripted, compiled or exported. An op wrapper then calls
    ``torch.ops.ancis.<op>`` itself (as torchvision's do): its value checks read tensors on
    the host, which a graph cannot hold, and the graph records the op, not a fallback."""
    return torch.jit.is_scripting() or torch.compiler.is_compiling()


def use_native(op: str, *tensors: Tensor) -> bool:
    """Whether ``op`` should run natively on these tensors; warns once per process (and once
    more for CUDA tensors without CUDA kernels) when it falls back to torch."""
    if not available():
        _warn_once("missing", f"ancis_fast.ops: native operators unavailable, using the pure-torch fallback "
                              f"(first for {op}): {_reason}")
        return False
    for t in tensors:
        if t.device.type == "cuda" and not _has_cuda:
            _warn_once("cuda", f"ancis_fast.ops: the native library was built without CUDA kernels; "
                               f"{op} and the other operators use the pure-torch fallback on CUDA tensors")
            return False
        if t.device.type not in ("cpu", "cuda", "meta"):
            return False
    return True
