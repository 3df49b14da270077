"""Checkpoints: release-format weights and resumable training state, written atomically.

Files of a training run in ``out_dir`` (``<stage>`` = ``detector`` or ``segmenter``):

- ``<stage>.pt``: latest weights, a bare state dict with the release's key names (loads
  with :func:`ancis_fast.models.load_weights` and the original code);
- ``<stage>_best.pt``: weights of the best validation score so far;
- ``<stage>_state.pt``: everything needed to resume (weights, optimiser, scheduler,
  position in the epoch, best score, history);
- ``log.jsonl``: one JSON line per validation / epoch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..io.writers import atomic_path

PathLike = Union[str, Path]


def release_state_dict(model: nn.Module, half: bool = False) -> Dict[str, Tensor]:
    """CPU copy of ``model.state_dict()`` without any ``module.`` prefix; floating tensors
    in fp16 when ``half`` (BatchNorm's integer counters keep their type)."""
    out = {}
    for key, value in model.state_dict().items():
        key = key[len("module."):] if key.startswith("module.") else key
        value = value.detach().cpu().clone()
        out[key] = value.half() if half and value.is_floating_point() else value
    return out


def save_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename onto it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_weights(model: nn.Module, path: PathLike, half: bool = False) -> Path:
    """Write the release-format state dict of ``model`` atomically."""
    return save_atomic(release_state_dict(model, half), path)


def export_half(source: PathLike, destination: PathLike) -> Path:
    """Convert a weights file to fp16 (for bundling); loads back into fp32 models."""
    from ..models.weights import read_state_dict

    state = read_state_dict(source)
    return save_atomic({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, destination)


def load_state(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Optional[Dict[str, Any]]:
    """The training state saved at ``path``, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)


def append_log(out_dir: PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``out_dir/log.jsonl`` (a line is one write: no partial records)."""
    with open(Path(out_dir) / "log.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
