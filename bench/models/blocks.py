"""Residual blocks: WeSpeaker's basic and bottleneck, the study's pre-activation 2/3-conv with SE."""

from __future__ import annotations

import torch
from torch import nn


def activation(name: str) -> nn.Module:
    return nn.SiLU(inplace=True) if name == "silu" else nn.ReLU(inplace=True)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class SqueezeExcite(nn.Module):
    """avg-pool -> Linear C->C -> SiLU -> Linear C->C -> sigmoid (the study's SE, no reduction)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        w = x.mean(dim=(2, 3))
        w = torch.sigmoid(self.fc2(self.act(self.fc1(w))))
        return x * w[:, :, None, None]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, act: str, se: bool):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = SqueezeExcite(planes) if se else nn.Identity()
        self.act = activation(act)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, act: str, se: bool):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.se = SqueezeExcite(out) if se else nn.Identity()
        self.act = activation(act)
        self.shortcut = _shortcut(cin, out, stride)

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return self.act(y + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-act-conv3x3(stride) -> BN-act-conv3x3 [-> BN-act-conv1x1] (+SE), shortcut conv1x1+BN."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, act: str, se: bool, three_conv: bool):
        super().__init__()
        layers = [nn.BatchNorm2d(cin), activation(act), conv3x3(cin, planes, stride),
                  nn.BatchNorm2d(planes), activation(act), conv3x3(planes, planes)]
        if three_conv:
            layers += [nn.BatchNorm2d(planes), activation(act), nn.Conv2d(planes, planes, 1, bias=False)]
        self.body = nn.Sequential(*layers)
        self.se = SqueezeExcite(planes) if se else nn.Identity()
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        return self.se(self.body(x)) + self.shortcut(x)


def make_block(kind: str, cin: int, planes: int, stride: int, act: str, se: bool) -> nn.Module:
    if kind == "basic":
        return BasicBlock(cin, planes, stride, act, se)
    if kind == "bottleneck":
        return Bottleneck(cin, planes, stride, act, se)
    return PreActBlock(cin, planes, stride, act, se, three_conv=(kind == "preact3"))
