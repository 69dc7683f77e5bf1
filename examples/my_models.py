"""A model file for the command line: ``MODULE:ATTR`` may name a class in a ``.py`` file.

    python -m profiler examples/my_models.py:Net --arg width=64 --input-size 8,32 --input-size 8,4 --measure-time --vs-thop

``Net`` takes two inputs, features ``[B, 32]`` and a context ``[B, 4]``. Its ``forward`` mixes the
hidden vector with a matrix of its own (``h @ self.mix``): hookprof counts that matmul in Net's
row, thop has no rule for it and counts 0.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Net"]


class Net(nn.Module):
    """``[B, features], [B, context] -> [B, classes]`` through a hidden layer of ``width``."""

    def __init__(self, width: int = 32, features: int = 32, context: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, width), nn.ReLU())
        self.context = nn.Linear(context, width)
        self.mix = nn.Parameter(torch.randn(width, width) / width**0.5)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.body(x) + self.context(context)
        return self.head(torch.relu(h @ self.mix))
