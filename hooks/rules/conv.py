"""Convolutions: MACs = output elements x (input channels per group) x kernel elements."""

from __future__ import annotations

from math import prod

import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import function_rule, module_rule
from hooks.rules.common import arg

__all__ = [
    "conv_counts",
    "conv_transpose_counts",
    "conv_function_counts",
    "conv_transpose_function_counts",
    "conv_macs",
    "conv_transpose_macs",
]


def conv_macs(output_numel: int, in_channels: int, groups: int, kernel: tuple[int, ...]) -> int:
    # [N, Cout, *S_out] = conv([N, Cin, *S_in]); weight [Cout, Cin/g, *K]
    # each output element is a dot product of length Cin/g * prod(K)
    return output_numel * (in_channels // groups) * prod(kernel)


def conv_transpose_macs(input_numel: int, out_channels: int, groups: int, kernel: tuple[int, ...]) -> int:
    # [N, Cout, *S_out] = conv_transpose([N, Cin, *S_in]); weight [Cin, Cout/g, *K]
    # each input element is scattered into Cout/g * prod(K) outputs (thop uses the output size)
    return input_numel * (out_channels // groups) * prod(kernel)


@module_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, thop="thop reads Cin from the input's dim 1, which is wrong for unbatched input")
def conv_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # thop reads Cin from input.shape[1], which is wrong for unbatched input; in_channels is not
    return Counts.matmul(conv_macs(output.numel(), module.in_channels, module.groups, module.kernel_size))


@module_rule(
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    thop="thop counts ConvTranspose over the output size instead of the input size",
)
def conv_transpose_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    return Counts.matmul(
        conv_transpose_macs(inputs[0].numel(), module.out_channels, module.groups, module.kernel_size)
    )


@function_rule(F.conv1d, F.conv2d, F.conv3d)
def conv_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # weight [Cout, Cin/g, *K]
    weight = arg(args, kwargs, 1, "weight")
    return Counts.matmul(out.numel() * prod(weight.shape[1:]))


@function_rule(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_transpose_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # weight [Cin, Cout/g, *K]
    x, weight = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight")
    return Counts.matmul(x.numel() * prod(weight.shape[1:]))
