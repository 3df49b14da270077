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
    """Inference form of :class:`SelfAttention`: one 1x1 conv computes F, G and V. On a GPU
    ``scaled_dot_product_attention`` (``scale=1.0``: the release has no ``1/sqrt(d)``)
    replaces the explicit softmax, so that fused attention kernels run; on a CPU, where
    PyTorch has no fused kernel for these head sizes (64 for F, G and 512 for V), the
    attention runs in blocks of queries (:func:`blocked_attention`).
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
        qkv = self.qkv(x).flatten(2).transpose(1, 2)  # [B, N, 2*C/8 + C]
        k = self.key_channels
        query, key, value = qkv[..., :k], qkv[..., k : 2 * k], qkv[..., 2 * k :]
        if x.device.type == "cpu":
            out = blocked_attention(query, key, value)
        else:
            out = F.scaled_dot_product_attention(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1),
                                                 scale=1.0).squeeze(1)  # [B, N, C]
        return out.transpose(1, 2).reshape(b, c, h, w) + x


def blocked_attention(query: Tensor, key: Tensor, value: Tensor, block: int = 1024) -> Tensor:
    """``softmax(query @ key^T) @ value`` (``[B,N,d]``, ``[B,N,d]``, ``[B,N,C]`` -> ``[B,N,C]``),
    computed for ``block`` queries at a time: the ``[block, N]`` scores stay in the CPU's
    cache where the full ``[N, N]`` matrix (64 MB for the 64x64 map of a 512 input) would
    not, which halves that attention's time. Each row's softmax is unchanged, so the result
    equals the unblocked computation."""
    key_t = key.transpose(1, 2)
    n = query.shape[1]
    if n <= block:
        return torch.bmm(torch.softmax(torch.bmm(query, key_t), dim=-1), value)
    out = value.new_empty((query.shape[0], n, value.shape[2]))
    for start in range(0, n, block):
        scores = torch.bmm(query[:, start : start + block], key_t)
        out[:, start : start + block] = torch.bmm(torch.softmax(scores, dim=-1), value)
    return out
