"""Linear and Bilinear: bias adds are not counted (as thop and FlopCounterMode)."""

from __future__ import annotations

import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import function_rule, module_rule
from hooks.rules.common import arg

__all__ = ["linear_counts", "quantized_linear_counts", "bilinear_counts", "linear_function_counts", "bilinear_function_counts"]


@module_rule(nn.Linear)
def linear_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, out] = linear([*, in]); weight [out, in]: in MACs per output element
    return Counts.matmul(output.numel() * module.in_features)


@module_rule(nnq.Linear, nnqd.Linear)
def quantized_linear_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # static and dynamic quantized Linear: [*, out] = linear([*, in]) on int8 weights, as Linear
    return Counts.matmul(output.numel() * module.in_features)


@module_rule(nn.Bilinear)
def bilinear_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, out] = bilinear([*, in1], [*, in2]); weight [out, in1, in2]
    # torch contracts in1 first ([*, out, in2], in1*in2 MACs per output), then in2 (in2 MACs)
    return Counts.matmul(output.numel() * module.in2_features * (module.in1_features + 1))


@function_rule(F.linear)
def linear_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # [*, out] = linear([*, in], weight [out, in]); a 1-D weight gives [*]
    return Counts.matmul(out.numel() * arg(args, kwargs, 0, "input").shape[-1])


@function_rule(F.bilinear)
def bilinear_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # weight [out, in1, in2], as the module
    _, in1, in2 = arg(args, kwargs, 2, "weight").shape
    return Counts.matmul(out.numel() * in2 * (in1 + 1))
