"""ResNet-SSD cell detector with self-attention (spec §2)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

from .attention import SelfAttention, upsample_to
from .priors import priors_per_cell
from .resnet import backbone_spec, make_layer, trunk_channels


def _extra_layer(in_ch: int, mid_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, mid_ch, 1), nn.BatchNorm2d(mid_ch), nn.ReLU(inplace=True),
        nn.Conv2d(mid_ch, out_ch, 3, stride=2, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


#: the modules :meth:`Detector.trunk` runs (and :meth:`Detector.heads` does not)
TRUNK_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")


class Detector(nn.Module):
    """ANCIS detector. Attribute names are the release's state-dict keys.

    ``forward(x [B,3,H,W] float in [0,1], BGR)`` returns
    ``(locs [B,P,4], conf [B,P,num_classes] logits, [c0, c1, c2, c3, c4])`` where the
    features are the input, the stride-2 stem (64 ch), layer1, the attended fused c3 (512)
    and the attended c4.
    """

    __jit_unused_properties__ = ["feature_channels"]

    def __init__(self, backbone: str = "resnet50", num_classes: int = 2):
        super().__init__()
        block, depths = backbone_spec(backbone)
        c2_ch, c3_ch, c4_ch = trunk_channels(backbone)
        self.backbone = backbone
        self.num_classes = num_classes

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(block, 64, 64, depths[0], stride=1)
        self.layer2 = make_layer(block, c2_ch, 128, depths[1], stride=2)
        self.layer3 = make_layer(block, c3_ch, 256, depths[2], stride=2)

        self.new_layer1 = _extra_layer(c4_ch, 256, 512)
        self.new_layer2 = _extra_layer(512, 128, 256)

        self.fusion_c3 = nn.Conv2d(c3_ch, 256, 1)
        self.fusion_c4 = nn.Conv2d(c4_ch, 256, 1)
        self.fusion_c5 = nn.Conv2d(512, 256, 1)
        self.fusion_end = nn.Sequential(nn.BatchNorm2d(768), nn.Conv2d(768, 512, 1), nn.ReLU(inplace=True))

        level_channels = (512, c4_ch, 512, 256)
        self.att_c3, self.att_c4, self.att_c5, self.att_c6 = (SelfAttention(c) for c in level_channels)
        for i, (name, ch) in enumerate(zip(("c3", "c4", "c5", "c6"), level_channels)):
            anchors = priors_per_cell(i)
            setattr(self, f"conf_{name}", nn.Conv2d(ch, anchors * num_classes, 3, padding=1))
            setattr(self, f"locs_{name}", nn.Conv2d(ch, anchors * 4, 3, padding=1))

    @property
    def feature_channels(self) -> Tuple[int, int, int, int, int]:
        """Channels of ``[c0, c1, c2, c3, c4]`` as returned by forward."""
        c2_ch, _, c4_ch = trunk_channels(self.backbone)
        return (3, 64, c2_ch, 512, c4_ch)

    def _fuse(self, c3: Tensor, c4: Tensor, c5: Tensor) -> Tensor:
        f3 = self.fusion_c3(c3)
        f4 = upsample_to(self.fusion_c4(c4), f3)
        f5 = upsample_to(self.fusion_c5(c5), f3)
        return self.fusion_end(torch.cat([f3, f4, f5], dim=1))

    @staticmethod
    def _flatten(head_out: Tensor, width: int) -> Tensor:
        """``[B, A*width, h, w]`` -> ``[B, h*w*A, width]`` (NHWC order, as the release)."""
        return head_out.permute(0, 2, 3, 1).reshape(head_out.shape[0], -1, width)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        c1, c2, c3, c4 = self.trunk(x)
        return self.heads(x, c1, c2, c3, c4)

    def trunk(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ResNet features of ``x``: ``c1`` (stem, stride 2), ``c2`` (layer1, stride 4),
        ``c3`` (layer2, stride 8), ``c4`` (layer3, stride 16)."""
        c1 = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return c1, c2, c3, c4

    def heads(self, x: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, c4: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """Everything after :meth:`trunk` (extra layers, fusion, attention, SSD heads): the
        outputs of :meth:`forward`."""
        c5 = self.new_layer1(c4)
        c6 = self.new_layer2(c5)

        a3 = self.att_c3(self._fuse(c3, c4, c5))
        a4 = self.att_c4(c4)
        a5 = self.att_c5(c5)
        a6 = self.att_c6(c6)

        nc = self.num_classes
        locs = torch.cat([
            self._flatten(self.locs_c3(a3), 4), self._flatten(self.locs_c4(a4), 4),
            self._flatten(self.locs_c5(a5), 4), self._flatten(self.locs_c6(a6), 4),
        ], dim=1)
        conf = torch.cat([
            self._flatten(self.conf_c3(a3), nc), self._flatten(self.conf_c4(a4), nc),
            self._flatten(self.conf_c5(a5), nc), self._flatten(self.conf_c6(a6), nc),
        ], dim=1)
        return locs, conf, [x, c1, c2, a3, a4]


def build_detector(backbone: str = "resnet50", num_classes: int = 2) -> Detector:
    """ANCIS detector with randomly initialised weights.

    ``resnet50`` (the paper's model, default), ``resnet101`` and ``resnet152`` load release
    checkpoints. ``resnet18``/``resnet34`` derive the head widths from their basic-block
    trunk; no release checkpoint exists for them.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + cell), got {num_classes}")
    return Detector(backbone, num_classes)
