"""Attention U-Net that segments one detected box from its feature crops (spec §5)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .attention import AttentionGate, upsample_to

#: channels of [c0 after layer_c0, c1, c2, c3, c4] for the release (ResNet-50/101/152) trunk
RELEASE_CHANNELS = (64, 64, 256, 512, 1024)


class Combination(nn.Module):
    """``layer_up_concat[i]``: upsample the decoder state, convolve, concatenate with the
    gated skip and mix with a 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, cat_ch: int):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))
        self.cat = nn.Sequential(nn.Conv2d(cat_ch, out_ch, 1), nn.ReLU(inplace=True))

    def forward(self, a: Tensor, pre: Tensor) -> Tensor:
        up = self.up(upsample_to(pre, a))
        return self.cat(torch.cat([a, up], dim=1))


class Segmenter(nn.Module):
    """ANCIS mask head. Attribute names are the release's state-dict keys.

    Use: ``c0 = segmenter.encode_c0(image)`` once per image (``[B,3,H,W]`` -> ``[B,64,H,W]``),
    then ``segmenter(crops)`` per box, where ``crops`` are the box's crops of
    ``[c0, c1, c2, c3, c4]`` (``L`` of them, 1 <= L <= 5, each ``[K,C_i,h_i,w_i]``);
    the result is the mask probability ``[K,1,h_0,w_0]`` at the level-0 crop size.
    ``segmenter(crops)`` equals ``decode_stage`` from level L-2 down to 0, then ``head``:
    the fast pipeline calls those steps itself, batching each over the boxes that share
    that step's crop shapes.
    """

    def __init__(self, channels: Sequence[int] = RELEASE_CHANNELS):
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels must list 5 levels (c0..c4), got {list(channels)}")
        self.channels = tuple(int(c) for c in channels)
        self.layer_c0 = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
        )
        ch = self.channels
        self.layer_att = nn.ModuleList([AttentionGate(ch[i + 1], ch[i]) for i in range(4)])
        self.layer_up_concat = nn.ModuleList([Combination(ch[i + 1], ch[i], 2 * ch[i]) for i in range(4)])
        self.layer_head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, 1, 3, padding=1),
        )

    @torch.jit.export
    def encode_c0(self, image: Tensor, inside: Optional[Tensor] = None) -> Tensor:
        """``layer_c0`` features ``[B,64,h,w]`` of ``image [B,3,h,w]``.

        ``inside`` (``[B,1,h,w]``, 1 inside the original image, 0 outside) is for crops
        that reach past the image border: the hidden layer is zeroed there, as the second
        conv's zero padding would be in the full-image computation.
        """
        hidden = self.layer_c0[1](self.layer_c0[0](image))
        if inside is not None:
            hidden = hidden * inside
        return self.layer_c0[3](self.layer_c0[2](hidden))

    @torch.jit.export
    def decode_stage(self, level: int, pre: Tensor, skip: Tensor) -> Tensor:
        """One decoder step (``level`` 0..3): the decoder state ``pre [K,C_(level+1),h',w']``
        (or the level+1 crop where decoding starts) gates and is merged into the level's
        crop ``skip [K,C_level,h,w]``; returns the next state ``[K,C_level,h,w]``."""
        # written out: TorchScript indexes a ModuleList by constants only
        if level == 3:
            return self.layer_up_concat[3](self.layer_att[3](pre, skip), pre)
        if level == 2:
            return self.layer_up_concat[2](self.layer_att[2](pre, skip), pre)
        if level == 1:
            return self.layer_up_concat[1](self.layer_att[1](pre, skip), pre)
        if level == 0:
            return self.layer_up_concat[0](self.layer_att[0](pre, skip), pre)
        raise ValueError(f"decoder stage level must be 0..3, got {level}")

    @torch.jit.export
    def head(self, state: Tensor) -> Tensor:
        """Mask probability ``[K,1,h_0,w_0]`` of the level-0 state ``[K,64,h_0,w_0]``."""
        return torch.sigmoid(self.layer_head(state))

    @torch.jit.export
    def decode_logits(self, crops: List[Tensor]) -> Tensor:
        """Mask logits ``[K,1,h_0,w_0]`` from the level crops ``crops[0..L-1]``."""
        levels = len(crops)
        if levels < 1 or levels > 5:
            raise ValueError(f"expected 1 to 5 level crops, got {levels}")
        pre = crops[levels - 1]
        for level in range(levels - 2, -1, -1):
            pre = self.decode_stage(level, pre, crops[level])
        return self.layer_head(pre)

    def forward(self, crops: List[Tensor]) -> Tensor:
        return torch.sigmoid(self.decode_logits(crops))


def build_segmenter(backbone: str = "resnet50") -> Segmenter:
    """ANCIS segmenter with random weights, sized for the detector ``backbone``'s features."""
    from .resnet import trunk_channels

    c2_ch, _, c4_ch = trunk_channels(backbone)
    return Segmenter((64, 64, c2_ch, 512, c4_ch))
