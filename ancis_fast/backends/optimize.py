"""Inference-only rewrites of the reference modules: the same network, cheaper to run.

Every function returns a modified deep copy; the reference model is never touched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..models.attention import FusedSelfAttention, SelfAttention


def _fold_bn_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv(bn(x))`` as one conv; exact only for a 1x1 conv without padding (the
    release's ``fusion_end``), which is the only place BN precedes a conv."""
    if conv.kernel_size != (1, 1) or conv.padding != (0, 0):
        raise ValueError("a BatchNorm can only be folded into a following 1x1 conv without padding")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = copy.deepcopy(conv)
    weight = conv.weight  # [out, in, 1, 1]
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    with torch.no_grad():
        fused.weight.copy_(weight * scale.view(1, -1, 1, 1))
        fused.bias = nn.Parameter(bias + (weight.flatten(1) @ shift))
    return fused


def _fold_sequential(seq: nn.Sequential) -> None:
    modules = list(seq)
    for i in range(len(modules) - 1):
        first, second = modules[i], modules[i + 1]
        if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
            modules[i], modules[i + 1] = fuse_conv_bn_eval(first, second), nn.Identity()
        elif isinstance(first, nn.BatchNorm2d) and isinstance(second, nn.Conv2d):
            modules[i], modules[i + 1] = nn.Identity(), _fold_bn_into_next_conv(first, second)
    for i, module in enumerate(modules):
        seq[i] = module


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into its neighbouring conv (copy of ``model``).

    Handles ``convN``/``bnN`` attribute pairs (ResNet blocks and stem) and consecutive
    (Conv, BN) or (BN, 1x1 Conv) entries of ``nn.Sequential`` containers.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
        for index in range(1, 4):
            conv, bn = getattr(module, f"conv{index}", None), getattr(module, f"bn{index}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{index}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{index}", nn.Identity())
    return model


def fuse_attention(model: nn.Module) -> nn.Module:
    """Replace every :class:`SelfAttention` by a :class:`FusedSelfAttention` (copy)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SelfAttention):
                setattr(parent, name, FusedSelfAttention(child))
    return model


def optimize_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """BN folding + fused attention (+ channels-last weights) on a copy of ``model``."""
    model = fuse_attention(fold_batchnorm(model))
    return model.to(memory_format=torch.channels_last) if channels_last else model
