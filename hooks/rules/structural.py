"""Layers that move, copy or drop data and do no floating-point work: 0 MACs, 0 FLOPs by decision."""

from __future__ import annotations

from torch import nn

from hooks.counts import Counts
from hooks.registry import free_modules, module_rule

__all__ = ["embedding_bag_counts"]

free_modules(
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.Embedding,
)


@module_rule(nn.EmbeddingBag)
def embedding_bag_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [B, dim] = embedding_bag(indices [n] or [B, L]); one add per gathered element for
    # mode "sum" and "mean", plus a division per output element for "mean"; "max" compares only
    gathered = inputs[0].numel() * module.embedding_dim
    if module.mode == "max":
        return Counts()
    weighted = len(inputs) > 2 and inputs[2] is not None
    flops = gathered * (2 if weighted else 1) + (output.numel() if module.mode == "mean" else 0)
    return Counts.elementwise(flops=flops)
