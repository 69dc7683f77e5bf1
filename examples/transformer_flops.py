"""The model from the article this project grew from: two Transformer blocks, profiled.

thop reports 10,485,760 "FLOPs" and 33,152 params for it; the truth is 21,790,720 MACs
(43,581,440 FLOPs of matmul-like work, as torch's FlopCounterMode counts) and 66,432 params.

    python examples/transformer_flops.py
"""

from __future__ import annotations

import torch
from torch import nn

from profiler import profile


class TransformerBlock(nn.Module):
    def __init__(self, embed_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(embed_dim=embed_size, num_heads=heads)
        self.fc = nn.Sequential(
            nn.Linear(embed_size, embed_size * 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(embed_size * 2, embed_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = self.attention(x, x, x)[0]
        return self.fc(attention)


class TransformerModel(nn.Module):
    def __init__(self, embed_size: int, heads: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerBlock(embed_size, heads, dropout) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def seed_model() -> tuple[nn.Module, torch.Tensor]:
    """The article's model (embed 64, 4 heads, 2 blocks) and its input (seq 10, batch 32)."""
    torch.manual_seed(0)
    return TransformerModel(embed_size=64, heads=4, num_layers=2, dropout=0.1), torch.rand(10, 32, 64)


def main() -> None:
    model, x = seed_model()
    result = profile(model, inputs=(x,))
    macs, params = result
    print(f"hookprof: {macs:,} MACs, {result.total_flops:,} FLOPs "
          f"({result.matmul_flops:,} in matmul-like work), {params:,} params")
    try:
        import thop
    except ImportError:
        print("thop:     not installed (pip install thop) - it reports 10,485,760 and 33,152")
    else:
        thop_macs, thop_params = thop.profile(model, inputs=(x,), verbose=False)
        print(f"thop:     {int(thop_macs):,} 'FLOPs' (really MACs), {int(thop_params):,} params")
    print("thop has no rule for nn.MultiheadAttention, so it misses the q/k/v/out projections and the\n"
          "attention matmuls, and their 33,280 parameters; it also calls its MACs 'FLOPs'.\n")
    print(result.table())


if __name__ == "__main__":
    main()
