"""Linear and Bilinear: bias adds are not counted (as thop and FlopCounterMode)."""

from __future__ import annotations

from torch import nn

from hooks.counts import Counts
from hooks.registry import module_rule

__all__ = ["linear_counts", "bilinear_counts"]


@module_rule(nn.Linear)
def linear_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, out] = linear([*, in]); weight [out, in]: in MACs per output element
    return Counts.matmul(output.numel() * module.in_features)


@module_rule(nn.Bilinear)
def bilinear_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, out] = bilinear([*, in1], [*, in2]); weight [out, in1, in2]
    # torch contracts in1 first ([*, out, in2], in1*in2 MACs per output), then in2 (in2 MACs)
    return Counts.matmul(output.numel() * module.in2_features * (module.in1_features + 1))
