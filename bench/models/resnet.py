"""The ResNet speaker-embedding network built from a ``ResNetSpec``.

Input ``(B, T, n_mels)`` log-mel frames -> output ``(B, embed_dim)`` embeddings.
Evaluation accepts any ``T >= MIN_FRAMES``.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models.blocks import activation, make_block
from bench.models.pooling import AttentiveStatsPool, StatsPool
from bench.models.spec import EXPANSION, ResNetSpec

STAGE_STRIDES = (1, 2, 2, 2)
MIN_FRAMES = 16  # after three stride-2 stages at least 2 time steps remain for the std


def _out_len(n: int, stride: int) -> int:
    return (n - 1) // stride + 1  # conv3x3, padding 1 / conv1x1, padding 0


class ResNetEmbedding(nn.Module):
    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.spec = spec
        ch = spec.scaled_channels
        stem = spec.stem_channels or ch[0]
        act = spec.activation
        pre = spec.block.startswith("preact")
        stem_layers = [nn.Conv2d(1, stem, 3, stride=(spec.stem_stride_freq, 1), padding=1, bias=False),
                       nn.BatchNorm2d(stem), activation(act)]
        self.stem = nn.Sequential(*stem_layers)
        freq = _out_len(spec.n_mels, spec.stem_stride_freq)
        cin = stem
        stages = []
        for i, (n_blocks, planes) in enumerate(zip(spec.stages, ch)):
            stride = STAGE_STRIDES[i] if i < len(STAGE_STRIDES) else 2
            blocks = []
            for b in range(n_blocks):
                blocks.append(make_block(spec.block, cin, planes, stride if b == 0 else 1, act,
                                         (i + 1) in spec.se_stages))
                cin = planes * EXPANSION[spec.block]
            freq = _out_len(freq, stride)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pre_activation = pre
        self.flat_dim = cin * freq
        if spec.pooling == "astp":
            self.pool = AttentiveStatsPool(self.flat_dim, max(1, int(round(spec.attention_dim * spec.width_mult))))
        else:
            self.pool = StatsPool(self.flat_dim)
        if spec.embed == "bn_linear_bn":
            self.embedding = nn.Sequential(nn.BatchNorm1d(self.pool.out_dim),
                                           nn.Linear(self.pool.out_dim, spec.embed_dim), nn.BatchNorm1d(spec.embed_dim))
        else:
            self.embedding = nn.Linear(self.pool.out_dim, spec.embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() != 3 or feats.shape[-1] != self.spec.n_mels:
            raise ValueError(f"expected (batch, frames, {self.spec.n_mels}) features, got {tuple(feats.shape)}")
        if feats.shape[1] < MIN_FRAMES:
            raise ValueError(f"need at least {MIN_FRAMES} frames, got {feats.shape[1]}")
        x = feats.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        stem_w = self.stem[0].weight
        if stem_w.is_contiguous(memory_format=torch.channels_last) and not stem_w.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)  # a channels-last model gets channels-last input
        x = self.stages(self.stem(x))
        x = x.flatten(1, 2)  # (B, C*F', T')
        return self.embedding(self.pool(x))


def min_samples(hop: int = 160, win: int = 400) -> int:
    return (MIN_FRAMES - 1) * hop + win


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def frames_after(spec: ResNetSpec, frames: int) -> int:
    for s in STAGE_STRIDES[: len(spec.stages)]:
        frames = _out_len(frames, s)
    return frames


