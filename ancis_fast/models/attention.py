"""The attention blocks of ANCIS: detector self-attention and segmenter gates."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Non-local self-attention over all positions of a map (spec §2, ``att_c*``).

    ``F = conv1(x)`` as ``[B,N,C/8]``, ``G = conv2(x)`` as ``[B,C/8,N]``,
    ``V = conv3(x)`` as ``[B,N,C]``; ``out = softmax(F @ G) @ V`` back to ``[B,C,h,w]``, plus x.
    The release applies no ``1/sqrt(d)`` scaling.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels // 8, 1, bias=False)
        self.conv3 = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        query = self.conv1(x).flatten(2).transpose(1, 2)  # [B, N, C/8]
        key = self.conv2(x).flatten(2)  # [B, C/8, N]
        value = self.conv3(x).flatten(2).transpose(1, 2)  # [B, N, C]
        beta = torch.softmax(torch.bmm(query, key), dim=-1)  # [B, N, N]
        out = torch.bmm(beta, value)  # [B, N, C]
        return out.transpose(1, 2).reshape(b, c, h, w) + x


def upsample_to(x: Tensor, like: Tensor) -> Tensor:
    """Bilinear resize of ``x`` to ``like``'s spatial size, ``align_corners=True`` (the
    release's ``upsample_bilinear``)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class AttentionGate(nn.Module):
    """Segmenter attention ``layer_att[i]`` (spec §5): gates the skip feature ``y`` by the
    coarser decoder state ``pre``."""

    def __init__(self, x_channels: int, y_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(x_channels, y_channels, 1)
        self.conv2 = nn.Conv2d(y_channels, y_channels, 1)

    def forward(self, pre: Tensor, y: Tensor) -> Tensor:
        gate = torch.sigmoid(F.relu(upsample_to(self.conv1(pre), y) + y))
        return F.relu(self.conv2(gate * y))


class FusedSelfAttention(nn.Module):
    """Inference form of :class:`SelfAttention`: one 1x1 conv computes F, G and V, and
    ``scaled_dot_product_attention`` (``scale=1.0``: the release has no ``1/sqrt(d)``)
    replaces the explicit softmax, so GPUs use their fused attention kernels.
    Same result as the module it is built from, up to float rounding."""

    def __init__(self, reference: SelfAttention):
        super().__init__()
        self.key_channels = reference.conv1.out_channels
        channels = reference.conv3.out_channels
        self.qkv = nn.Conv2d(channels, 2 * self.key_channels + channels, 1, bias=False)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([reference.conv1.weight, reference.conv2.weight, reference.conv3.weight]))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, N, 2*C/8 + C]
        k = self.key_channels
        query, key, value = qkv[..., :k], qkv[..., k : 2 * k], qkv[..., 2 * k :]
        out = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # [B, 1, N, C]
        return out.squeeze(1).transpose(1, 2).reshape(b, c, h, w) + x
