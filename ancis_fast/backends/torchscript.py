"""TorchScript: the mission's deployable format (``torch.jit.script``)."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
from torch import nn


@contextlib.contextmanager
def _quiet(call: str) -> Iterator[None]:
    """Hide torch >= 2.10's deprecation warning of ``torch.jit.<call>`` (it still works and
    TorchScript stays our C++ deployment format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=rf"`torch\.jit\.{call}` is deprecated", category=FutureWarning)
        yield


def script(obj: Union[nn.Module, Callable]) -> Any:
    """``torch.jit.script`` of a module or function without its deprecation warning, and
    safe from stale builtins (:func:`drop_stale_builtins`)."""
    drop_stale_builtins()
    with _quiet("script"):
        return torch.jit.script(obj)


def stale_builtins() -> List[int]:
    """Keys of TorchScript's builtin-op table (``id()`` of an op object) that no longer
    belong to their op.

    The table is keyed by ``id()``. When a library adds an overload to an op that Python has
    already looked up (``torch.ao.quantization``'s import does so for
    ``quantized_decomposed::quantize_per_tensor``), torch makes a new op object and registers
    it, but the old one's entry stays: once the old object is freed, any new object at its
    address - a conv's padding list, say - is taken for that op, and scripting fails with
    "builtin cannot be used as a value". Only custom namespaces are checked: ``aten``/``prim``
    entries are keyed by torch's own functions, which are never freed.
    """
    try:
        table = torch.jit._builtins._get_builtin_table()
    except AttributeError:  # a torch without this table cannot have the problem
        return []
    stale = []
    for key, qualname in table.items():
        namespace, _, name = qualname.partition("::")
        if namespace in ("aten", "prim") or not name:
            continue
        ops = torch.ops.__dict__.get(namespace)  # only packets Python has looked up
        packet = ops.__dict__.get(name.split(".")[0]) if ops is not None else None
        if packet is not None and id(packet._op) != key:
            stale.append(key)
    return stale


def drop_stale_builtins() -> None:
    """Remove :func:`stale_builtins` from TorchScript's builtin table."""
    keys = stale_builtins()
    if keys:
        table = torch.jit._builtins._get_builtin_table()
        for key in keys:
            del table[key]


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
