"""Count a module of your own: a thop-style ``custom_ops`` rule, or a registered rule.

Without a rule, a module's torch functions are counted one by one (here: the ``matmul``). A rule
replaces that with your own formula for the whole module, children included.

    python examples/custom_rule.py
"""

from __future__ import annotations

import torch
from torch import nn

from profiler import Counts, profile


class LowRankLinear(nn.Module):
    """y = x @ (U @ V): computed as (x @ U) @ V, which is what the rule below counts."""

    def __init__(self, features: int, rank: int) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(features, rank))
        self.v = nn.Parameter(torch.randn(rank, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.u) @ self.v


def low_rank_counts(module: LowRankLinear, inputs: tuple, output: torch.Tensor) -> Counts:
    # [*, F] -> [*, R] -> [*, F]: F * R MACs per row for each product
    rows = inputs[0].numel() // inputs[0].shape[-1]
    features, rank = module.u.shape
    return Counts.matmul(2 * rows * features * rank)


def thop_style_counts(module, inputs, output):
    # thop's rules add to module.total_ops; hookprof gives them a stand-in, never your module
    module.total_ops += torch.DoubleTensor([2 * output.numel() * module.u.shape[1]])


def main() -> None:
    model = nn.Sequential(LowRankLinear(256, 16), nn.GELU(), LowRankLinear(256, 16))
    x = torch.rand(8, 256)
    traced = profile(model, (x,))
    ruled = profile(model, (x,), custom_ops={LowRankLinear: low_rank_counts})
    thop_style = profile(model, (x,), custom_ops={LowRankLinear: thop_style_counts})
    print(f"traced matmuls: {traced.total_macs:,} MACs; rule: {ruled.total_macs:,}; thop-style rule: {thop_style.total_macs:,}")
    print(ruled.table(units="exact"))


if __name__ == "__main__":
    main()
