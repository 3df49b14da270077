"""Checkpoint loading: release state dicts, ``module.`` prefixes, clear mismatch errors,
and the bundled default model. Nothing is ever downloaded."""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from torch import Tensor, nn

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_DETECTOR = ASSETS / "default_detector.pt"
DEFAULT_SEGMENTER = ASSETS / "default_segmenter.pt"

StateDict = Dict[str, Tensor]
WeightsSource = Union[str, os.PathLike, Mapping[str, Tensor]]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_state_dict(source: WeightsSource) -> StateDict:
    """Read a state dict from a path (``torch.load(weights_only=True)``) or take a mapping.

    Accepts a bare state dict or one wrapped under ``state_dict``/``model``; strips the
    ``module.`` prefix that ``nn.DataParallel`` checkpoints carry.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state = _load_file(Path(source))
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {_describe(source)} does not hold a state dict of tensors; {EXPECTED}")
    return {_strip_prefix(k): v for k, v in state.items()}


#: what a file is, by its first bytes; torch.save writes a zip archive (or, before torch 1.6, a pickle)
FILE_SIGNATURES = {
    b"\x89PNG": "a PNG image", b"II*\x00": "a TIFF image", b"MM\x00*": "a TIFF image",
    b"\xff\xd8\xff": "a JPEG image", b"BM": "a BMP image", b"GIF8": "a GIF image", b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive", b"\x89HDF": "an HDF5 file (e.g. a Keras model)",
}
TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")
EXPECTED = ("expected a PyTorch state dict of tensors written by torch.save(model.state_dict(), path) "
            "(.pt/.pth), such as the ANCIS release's detector and segmenter checkpoints")


def _load_file(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` with errors that say what the file is.

    Only tensors and plain containers are ever unpickled: other pickled objects could run
    code, so a file holding them is refused (the message says how to re-save it)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head.startswith(TORCH_SIGNATURES):
        kind = next((what for magic, what in FILE_SIGNATURES.items() if head.startswith(magic)),
                    "an empty file" if not head else "not a file written by torch.save")
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint: it is {kind}; {EXPECTED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text advises weights_only=False: never pass it on
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds Python objects other than tensors (e.g. a whole pickled model or "
            "training state); they are not loaded because unpickling them can run arbitrary code. "
            f"{EXPECTED[0].upper()}{EXPECTED[1:]}: load the file where it was made and re-save model.state_dict()"
        ) from None
    except Exception as exc:  # zip and EOF errors: a damaged or incomplete file
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({type(exc).__name__}); the file looks damaged or incomplete: "
            "was it copied completely?"
        ) from exc


def _strip_prefix(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _describe(source: WeightsSource) -> str:
    return "<state dict>" if isinstance(source, Mapping) else repr(str(source))


def infer_backbone(state: Mapping[str, Tensor]) -> Optional[str]:
    """Guess the trunk of a detector state dict from its block counts, or None."""
    def blocks(layer: int) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        return max(found) + 1 if found else 0

    bottleneck = any(re.match(r"layer1\.0\.conv3\.", k) for k in state)
    counts = (blocks(1), blocks(2), blocks(3))
    table = {
        (True, (3, 4, 6)): "resnet50", (True, (3, 4, 23)): "resnet101", (True, (3, 8, 36)): "resnet152",
        (False, (2, 2, 2)): "resnet18", (False, (3, 4, 6)): "resnet34",
    }
    return table.get((bottleneck, counts))


def _likely_cause(model: nn.Module, state: Mapping[str, Tensor]) -> str:
    is_seg_file = any(k.startswith("layer_c0.") for k in state)
    is_det_file = any(k.startswith(("conf_c3.", "att_c3.")) for k in state)
    model_is_det = hasattr(model, "conf_c3")
    if model_is_det and is_seg_file:
        return "this is a segmenter checkpoint given as the detector's weights"
    if not model_is_det and is_det_file:
        return "this is a detector checkpoint given as the segmenter's weights"
    if model_is_det:
        found = infer_backbone(state)
        wanted = getattr(model, "backbone", None)
        if found and found != wanted:
            return f"the checkpoint is a {found} detector but the model is {wanted}; pass backbone={found!r}"
    return "the checkpoint was saved from a different model version or configuration"


def load_weights(model: nn.Module, source: WeightsSource) -> nn.Module:
    """Load ``source`` (path or state dict) into ``model`` strictly and return the model.

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: unreadable file, or keys/shapes that do not match the model; the
            message lists missing/unexpected keys and the likely cause.
    """
    state = read_state_dict(source)
    expected = model.state_dict()
    # lists keep the model's (or the file's) key order, which reads block by block
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {_describe(source)} does not fit {type(model).__name__}: "
            f"{_summarise('missing', missing)}{_summarise('unexpected', unexpected)}"
            f"{_summarise('shape mismatch', mismatched)}likely cause: {_likely_cause(model, state)}"
        )
    model.load_state_dict(state, strict=True)
    return model


def _summarise(kind: str, keys: list, shown: int = 5) -> str:
    if not keys:
        return ""
    more = f" ... (+{len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)} {kind} key(s) [{', '.join(keys[:shown])}{more}]; "


def default_weights() -> tuple[Path, Path]:
    """Paths of the bundled default detector and segmenter (ResNet-50).

    Raises:
        FileNotFoundError: the package was installed without its bundled model.
    """
    missing = [p for p in (DEFAULT_DETECTOR, DEFAULT_SEGMENTER) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "the bundled default model is not part of this ancis_fast build "
            f"(missing {', '.join(str(p) for p in missing)}); pass detector_weights= and "
            "segmenter_weights= (or --weights-det/--weights-seg) pointing at ANCIS checkpoints"
        )
    return DEFAULT_DETECTOR, DEFAULT_SEGMENTER
