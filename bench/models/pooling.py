"""Temporal pooling: statistics (mean + std, WeSpeaker TSTP) and attentive statistics (ASTP)."""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-5


class StatsPool(nn.Module):
    """(B, D, T) -> (B, 2D): mean and standard deviation over time."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = 2 * in_dim

    def forward(self, x):
        mean = x.mean(dim=-1)
        std = torch.sqrt(x.var(dim=-1, unbiased=False).clamp(min=EPS))
        return torch.cat([mean, std], dim=1)


class AttentiveStatsPool(nn.Module):
    """(B, D, T) -> (B, 2D): attention-weighted mean and std (Conv1d D->A, tanh, Conv1d A->D, softmax over T)."""

    def __init__(self, in_dim: int, attention_dim: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(in_dim, attention_dim, 1), nn.Tanh(),
                                       nn.Conv1d(attention_dim, in_dim, 1))
        self.out_dim = 2 * in_dim

    def forward(self, x):
        w = torch.softmax(self.attention(x).float(), dim=-1).to(x.dtype)
        mean = torch.sum(w * x, dim=-1)
        var = torch.sum(w * x * x, dim=-1) - mean * mean
        std = torch.sqrt(var.float().clamp(min=EPS)).to(x.dtype)
        return torch.cat([mean, std], dim=1)
