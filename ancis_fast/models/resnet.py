"""ResNet v1 trunk of the ANCIS detector: conv1 .. layer3 (there is no layer4).

Module names match torchvision's ResNet and therefore the release's state-dict keys
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...).
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Type, Union

from torch import Tensor, nn


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, width, stride) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, ResNet v1.5 as in torchvision) -> 1x1, expansion 4."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: bool = False):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]

#: backbone name -> (block type, blocks in layer1..layer3)
BACKBONES: Dict[str, Tuple[Block, List[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6]),
    "resnet50": (Bottleneck, [3, 4, 6]),
    "resnet101": (Bottleneck, [3, 4, 23]),
    "resnet152": (Bottleneck, [3, 8, 36]),
}

#: backbones whose widths match the released heads (expansion 4)
RELEASE_BACKBONES = ("resnet50", "resnet101", "resnet152")


def backbone_spec(name: str) -> Tuple[Block, List[int]]:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def trunk_channels(name: str) -> Tuple[int, int, int]:
    """Output channels of layer1, layer2, layer3 (c2, c3, c4) for a backbone."""
    block, _ = backbone_spec(name)
    return (64 * block.expansion, 128 * block.expansion, 256 * block.expansion)


def make_layer(block: Block, in_ch: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    out_ch = width * block.expansion
    needs_downsample = stride != 1 or in_ch != out_ch
    layers = [block(in_ch, width, stride, needs_downsample)]
    layers += [block(out_ch, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)
