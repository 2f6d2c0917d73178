"""Margin softmax heads with a schedulable margin: additive angular (ArcFace) and additive cosine."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Cosine classifier with scale ``s`` and a margin that a schedule may change (``set_margin``).

    ``kind="aam"``: logit of the true class is ``s * cos(theta + m)`` (ArcFace, with the usual
    fallback ``cos(theta) - m sin(m)`` past ``pi - m``); ``kind="am"``: ``s * (cos(theta) - m)``.
    """

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.2,
                 kind: str = "aam"):
        super().__init__()
        if kind not in ("aam", "am"):
            raise ValueError(f"unknown margin head '{kind}'")
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.kind = kind
        self.scale = scale
        self.max_margin = margin
        self.margin = margin

    def set_margin(self, margin: float) -> None:
        self.margin = float(margin)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(emb.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        m = self.margin
        if self.kind == "am":
            target = cosine - m
        else:
            sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=0.0))
            phi = cosine * math.cos(m) - sine * math.sin(m)
            th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
            target = torch.where(cosine > th, phi, cosine - mm)
        return self.scale * (one_hot * target + (1.0 - one_hot) * cosine)
