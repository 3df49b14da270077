"""The whole static fast pipeline replayed as one CUDA graph.

:class:`~ancis_fast.pipeline.fast.FastCore` in fast mode with fixed ``shape_budgets`` is one
static graph from the network input to the padded outputs (no host synchronisation, no
data-dependent shape), so one capture per input shape serves every batch of that shape: new
data is copied into the captured input and the graph replayed, with no launch overhead.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from ..pipeline.fast import check_static


class CudaGraphPipeline(nn.Module):
    """``core(x)`` captured as a ``torch.cuda.CUDAGraph`` for inputs shaped like ``example``.

    ``forward(x)`` returns the core's six outputs; they live in the graph's memory and are
    overwritten by the next call (clone what must outlive it).
    """

    def __init__(self, core: nn.Module, example: Tensor, warmup: int = 2):
        super().__init__()
        if example.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA input, got one on {example.device}")
        check_static(core, "a CUDA graph")
        self.core = core
        self.static_input = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):  # allocations and lazy initialisation happen outside the capture
                core(self.static_input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_outputs = core(self.static_input)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if x.shape != self.static_input.shape:
            raise ValueError(f"input has shape {list(x.shape)}; this graph was captured for "
                             f"{list(self.static_input.shape)}")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_outputs
