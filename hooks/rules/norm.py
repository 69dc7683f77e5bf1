"""Normalisation layers.

MACs follow thop: 2 per input element (subtract the mean, divide by the deviation), doubled when
the layer is affine; GroupNorm and RMSNorm, which thop lacks, count the same way.
FLOPs per input element: 3 to compute mean and variance when they come from the batch, 2 to
normalise, 1 for the affine scale and 1 for the affine shift; RMSNorm: 2 for the mean square,
1 to normalise, 1 for the scale.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import function_rule, module_rule
from hooks.rules.common import arg

__all__ = [
    "norm_flops",
    "rms_norm_flops",
    "batch_norm_counts",
    "instance_norm_counts",
    "layer_norm_counts",
    "group_norm_counts",
    "rms_norm_counts",
    "layer_norm_function_counts",
    "group_norm_function_counts",
    "batch_norm_function_counts",
    "instance_norm_function_counts",
    "rms_norm_function_counts",
]


def norm_flops(numel: int, batch_stats: bool, weight: bool, bias: bool) -> int:
    # y = (x - mean) * rsqrt(var + eps) * weight + bias; mean, var from x when batch_stats
    return numel * ((3 if batch_stats else 0) + 2 + weight + bias)


def rms_norm_flops(numel: int, weight: bool) -> int:
    # y = x * rsqrt(mean(x^2) + eps) * weight
    return numel * (2 + 1 + weight)


def _thop_norm_macs(numel: int, affine: bool) -> int:
    return 2 * numel * (2 if affine else 1)


def _affine_counts(module: nn.Module, numel: int, affine: bool, batch_stats: bool) -> Counts:
    weight = getattr(module, "weight", None) is not None
    bias = getattr(module, "bias", None) is not None
    return Counts.elementwise(
        flops=norm_flops(numel, batch_stats, weight, bias), macs=_thop_norm_macs(numel, affine)
    )


@module_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def batch_norm_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [N, C, *S] -> same; running statistics in eval mode, batch statistics in training
    batch_stats = module.training or module.running_mean is None
    return _affine_counts(module, inputs[0].numel(), module.affine, batch_stats)


@module_rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def instance_norm_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [N, C, *S] -> same; statistics per (n, c) unless running stats are tracked and in eval
    batch_stats = module.training or not module.track_running_stats
    return _affine_counts(module, inputs[0].numel(), module.affine, batch_stats)


@module_rule(nn.LayerNorm)
def layer_norm_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, *normalized_shape] -> same
    return _affine_counts(module, inputs[0].numel(), module.elementwise_affine, True)


@module_rule(nn.GroupNorm)
def group_norm_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [N, C, *S] -> same; statistics per (n, group)
    return _affine_counts(module, inputs[0].numel(), module.affine, True)


def rms_norm_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, *normalized_shape] -> same
    numel = inputs[0].numel()
    weight = module.weight is not None
    return Counts.elementwise(flops=rms_norm_flops(numel, weight), macs=_thop_norm_macs(numel, weight))


if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    module_rule(nn.RMSNorm)(rms_norm_counts)


# As functions, norms count 0 MACs: MACs count matmul-like work outside thop's module types.


@function_rule(F.layer_norm)
def layer_norm_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # layer_norm(input, normalized_shape, weight, bias, eps)
    weight, bias = arg(args, kwargs, 2, "weight", None), arg(args, kwargs, 3, "bias", None)
    return Counts.elementwise(flops=norm_flops(out.numel(), True, weight is not None, bias is not None))


@function_rule(F.group_norm)
def group_norm_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # group_norm(input, num_groups, weight, bias, eps)
    weight, bias = arg(args, kwargs, 2, "weight", None), arg(args, kwargs, 3, "bias", None)
    return Counts.elementwise(flops=norm_flops(out.numel(), True, weight is not None, bias is not None))


@function_rule(F.batch_norm)
def batch_norm_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # batch_norm(input, running_mean, running_var, weight, bias, training, ...)
    weight, bias = arg(args, kwargs, 3, "weight", None), arg(args, kwargs, 4, "bias", None)
    batch_stats = arg(args, kwargs, 5, "training", False) or arg(args, kwargs, 1, "running_mean") is None
    return Counts.elementwise(flops=norm_flops(out.numel(), batch_stats, weight is not None, bias is not None))


@function_rule(F.instance_norm)
def instance_norm_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, ...)
    weight, bias = arg(args, kwargs, 3, "weight", None), arg(args, kwargs, 4, "bias", None)
    batch_stats = arg(args, kwargs, 5, "use_input_stats", True)
    return Counts.elementwise(flops=norm_flops(out.numel(), batch_stats, weight is not None, bias is not None))


def rms_norm_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # rms_norm(input, normalized_shape, weight, eps)
    return Counts.elementwise(flops=rms_norm_flops(out.numel(), arg(args, kwargs, 2, "weight", None) is not None))


if hasattr(F, "rms_norm"):  # torch >= 2.4
    function_rule(F.rms_norm)(rms_norm_function_counts)
