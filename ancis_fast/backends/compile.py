"""``torch.compile`` backend: the fast pipeline's detector and mask decoder, compiled.

The pipeline's code is unchanged: the registry (:func:`ancis_fast.backends.build`) hands it
wrappers of the detector and mask network with the same interface whose forward passes run
compiled, lazily, on the first images.

- Detector: static shapes (``dynamic=False``; a batch size compiles once). On a GPU
  ``mode="max-autotune"``, which also captures CUDA graphs.
- Mask decoder: its steps (``decode_stage`` of levels 3..0 and ``head``) run once per group
  of boxes, with a different box count and (fast mode: a few, exact mode: many) crop sizes
  every call, so every dimension is dynamic (``dynamic=True``) and each step compiles once.
  Duck shaping (equal sizes share one symbol) is off for it: it would specialise square
  crops and recompile for every non-square one, until the recompile limit.
  On a GPU ``mode="max-autotune-no-cudagraphs"``: CUDA graphs would be re-recorded for
  every new group shape and sequence of groups, costing more than they save.
- ``encode_c0`` (two convolutions on the level-0 crops) stays eager.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, List, Optional, Tuple

import torch
import torch._dynamo.config as dynamo_config
import torch.fx.experimental._config as shape_config
from torch import Tensor, nn

#: decoder graphs: one per step (4 levels and the head), with margin
DECODER_RECOMPILE_LIMIT = 16
NUM_STAGES = 4  # decode_stage levels 0..3


def detector_mode(device: torch.device) -> Optional[str]:
    """``torch.compile`` mode of the detector on ``device`` (``None``: the default mode).

    The environment variable ``ANCIS_COMPILE_MODE`` overrides it (``default``,
    ``reduce-overhead``: CUDA graphs without max-autotune's minutes of kernel tuning, ...).
    """
    override = os.environ.get("ANCIS_COMPILE_MODE")
    if override:
        return None if override == "default" else override
    return "max-autotune" if device.type == "cuda" else None


def decoder_mode(device: torch.device) -> Optional[str]:
    """``torch.compile`` mode of the mask decoder on ``device``."""
    return "max-autotune-no-cudagraphs" if device.type == "cuda" else None


class CompiledDetector(nn.Module):
    """``detector`` with a compiled forward (same inputs and outputs)."""

    def __init__(self, detector: nn.Module, device: torch.device):
        super().__init__()
        self.detector = detector
        self.cuda_graphs = device.type == "cuda"
        self._forward = torch.compile(detector.forward, mode=detector_mode(device), dynamic=False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        if self.cuda_graphs:
            # a new inference: the previous call's outputs (graph memory) are no longer used
            torch.compiler.cudagraph_mark_step_begin()
        return self._forward(x)


class CompiledSegmenter(nn.Module):
    """``segmenter`` with compiled decoder steps (``decode_stage`` per level and ``head``),
    ``encode_c0`` eager; same interface as
    :class:`~ancis_fast.models.segmenter.Segmenter`."""

    def __init__(self, segmenter: nn.Module, device: torch.device):
        super().__init__()
        self.segmenter = segmenter
        mode = decoder_mode(device)
        self._stages = [torch.compile(functools.partial(segmenter.decode_stage, level), mode=mode, dynamic=True)
                        for level in range(NUM_STAGES)]
        self._head = torch.compile(segmenter.head, mode=mode, dynamic=True)

    def forward(self, crops: List[Tensor]) -> Tensor:
        pre = crops[-1]
        for level in range(len(crops) - 2, -1, -1):
            pre = self.decode_stage(level, pre, crops[level])
        return self.head(pre)

    def decode_stage(self, level: int, pre: Tensor, skip: Tensor) -> Tensor:
        return self._run(self._stages[level], [pre, skip])

    def head(self, state: Tensor) -> Tensor:
        return self._run(self._head, [state])

    def _run(self, step: Callable[..., Tensor], inputs: List[Tensor]) -> Tensor:
        if inputs[0].shape[0] == 1:
            # a size-1 dimension is always specialised: run one box as two so that single
            # boxes share the graph of groups instead of compiling their own
            return self._call(step, [torch.cat([t, t]) for t in inputs])[:1]
        return self._call(step, inputs)

    @staticmethod
    def _call(step: Callable[..., Tensor], inputs: List[Tensor]) -> Tensor:
        # the settings are read when a graph is compiled, i.e. within this call
        with shape_config.patch(use_duck_shape=False), dynamo_config.patch(recompile_limit=DECODER_RECOMPILE_LIMIT):
            return step(*inputs)

    def encode_c0(self, image: Tensor, inside: Optional[Tensor] = None) -> Tensor:
        return self.segmenter.encode_c0(image, inside)

    def decode_logits(self, crops: List[Tensor]) -> Tensor:
        return self.segmenter.decode_logits(crops)
