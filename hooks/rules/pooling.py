"""Pooling and upsampling.

Average pooling counts, per output element, the additions over its window and one division:
MACs = window + 1 per output (thop's convention for adaptive pooling, which thop's AvgPool drops),
FLOPs = window per output (window - 1 additions and 1 division). A window holds the input elements
it reads: padding and the overhang of ``ceil_mode`` are not read. Max pooling is free.
Upsampling MACs are thop's per-output constants; FLOPs count the interpolation arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import ceil, floor, prod

import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import free_functions, free_modules, function_rule, module_rule
from hooks.rules.common import arg

__all__ = [
    "adaptive_window_sum",
    "pool_window_sum",
    "avg_pool_window_counts",
    "avg_pool_counts",
    "adaptive_avg_pool_counts",
    "upsample_counts",
    "interpolate_counts",
    "interpolate_function_counts",
]


def adaptive_window_sum(in_size: int, out_size: int) -> int:
    """Sum of the window lengths adaptive pooling uses to map ``in_size`` onto ``out_size``."""
    # window i covers [floor(i * in / out), ceil((i + 1) * in / out))
    return sum(
        ceil((i + 1) * in_size / out_size) - floor(i * in_size / out_size) for i in range(out_size)
    )


def pool_window_sum(in_size: int, out_size: int, kernel: int, stride: int, padding: int) -> int:
    """Sum over the outputs of how many input elements each average-pooling window reads.

    Windows are clipped to the input: padding and the overhang of ``ceil_mode`` hold no elements.
    """
    total = 0
    for i in range(out_size):
        start = i * stride - padding
        total += max(0, min(start + kernel, in_size) - max(start, 0))
    return total


def _windows(output_shape: Sequence[int], ndim: int, sums: Sequence[int]) -> Counts:
    # [*, *S_in] -> [*, *S_out]; windows factor per dimension, so their sizes sum to a product
    out_spatial = output_shape[len(output_shape) - ndim :]
    out_numel = prod(output_shape)
    planes = out_numel // prod(out_spatial) if prod(out_spatial) else 0
    window_total = planes * prod(sums)
    return Counts.elementwise(flops=window_total, macs=window_total + out_numel)


def _adaptive_avg(input_shape: Sequence[int], output_shape: Sequence[int], ndim: int) -> Counts:
    spatial = zip(input_shape[len(input_shape) - ndim :], output_shape[len(output_shape) - ndim :])
    return _windows(output_shape, ndim, [adaptive_window_sum(i, o) for i, o in spatial])


def _per_dim(value: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    return (value,) * ndim if isinstance(value, int) else tuple(value)


def avg_pool_window_counts(
    input_shape: Sequence[int], output_shape: Sequence[int], ndim: int, kernel_size, stride, padding
) -> Counts:
    """Average pooling: each output reads its clipped window (FLOPs: window - 1 adds, 1 division)."""
    kernel = _per_dim(kernel_size, ndim)
    strides = _per_dim(stride, ndim) if stride else kernel  # stride=None or () means the kernel
    pads = _per_dim(padding, ndim)
    spatial = zip(input_shape[len(input_shape) - ndim :], output_shape[len(output_shape) - ndim :],
                  kernel, strides, pads)
    return _windows(output_shape, ndim, [pool_window_sum(*dims) for dims in spatial])


def _avg_pool_rule(ndim: int) -> Callable[[nn.Module, tuple, object], Counts]:
    def avg_pool_counts(module: nn.Module, inputs: tuple, output) -> Counts:
        # [*, C, *S_in] -> [*, C, *S_out]; MACs = sum of windows + one per output (thop's adaptive form)
        return avg_pool_window_counts(inputs[0].shape, output.shape, ndim, module.kernel_size, module.stride,
                                      module.padding)

    return avg_pool_counts


def _adaptive_avg_pool_rule(ndim: int) -> Callable[[nn.Module, tuple, object], Counts]:
    def adaptive_avg_pool_counts(module: nn.Module, inputs: tuple, output) -> Counts:
        return _adaptive_avg(inputs[0].shape, output.shape, ndim)

    return adaptive_avg_pool_counts


avg_pool_counts = _avg_pool_rule(2)
adaptive_avg_pool_counts = _adaptive_avg_pool_rule(2)
_AVG_POOL_THOP = "thop counts one operation per output of AvgPool, ignoring its window"
_ADAPTIVE_THOP = "thop divides the sizes as floats, which is wrong when they do not divide"
module_rule(nn.AvgPool1d, thop=_AVG_POOL_THOP)(_avg_pool_rule(1))
module_rule(nn.AvgPool2d, thop=_AVG_POOL_THOP)(avg_pool_counts)
module_rule(nn.AvgPool3d, thop=_AVG_POOL_THOP)(_avg_pool_rule(3))
module_rule(nn.AdaptiveAvgPool1d, thop=_ADAPTIVE_THOP)(_adaptive_avg_pool_rule(1))
module_rule(nn.AdaptiveAvgPool2d, thop=_ADAPTIVE_THOP)(adaptive_avg_pool_counts)
module_rule(nn.AdaptiveAvgPool3d, thop=_ADAPTIVE_THOP)(_adaptive_avg_pool_rule(3))

free_modules(
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d,
    nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
)

# mode: (thop's MACs per output element, FLOPs per output element)
# a 1-D linear interpolation a + t * (b - a) is 3 FLOPs; a 1-D cubic one is 4 products and 3 sums
INTERPOLATION = {
    "nearest": (1, 0),
    "nearest-exact": (1, 0),
    "linear": (5, 3),
    "bilinear": (11, 3 * 3),
    "trilinear": (13 * 2 + 5, 7 * 3),
    "bicubic": (224 + 35, 5 * 7),
}


def interpolate_counts(input_shape: Sequence[int], output_shape: Sequence[int], mode: str) -> Counts:
    """Counts of ``F.interpolate`` from ``input_shape`` to ``output_shape`` in ``mode``."""
    if mode == "area":
        return _adaptive_avg(input_shape, output_shape, len(output_shape) - 2)
    macs, flops = INTERPOLATION[mode]
    out_numel = prod(output_shape)
    return Counts.elementwise(flops=flops * out_numel, macs=macs * out_numel)


@module_rule(nn.Upsample, thop="thop counts trilinear, nearest-exact and area upsampling as 0")
def upsample_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [N, C, *S_in] -> [N, C, *S_out]; UpsamplingNearest2d and UpsamplingBilinear2d inherit this
    return interpolate_counts(inputs[0].shape, output.shape, module.mode)


# As functions, pooling and interpolation count 0 MACs (thop's numbers are for its module types).


def _avg_pool_function_rule(ndim: int) -> Callable[[tuple, dict, object], Counts]:
    def avg_pool_function_counts(args: tuple, kwargs: dict, out) -> Counts:
        # avg_pool(input, kernel_size, stride=None, padding=0, ceil_mode, count_include_pad, ...)
        counts = avg_pool_window_counts(
            args[0].shape, out.shape, ndim, arg(args, kwargs, 1, "kernel_size"),
            arg(args, kwargs, 2, "stride", None), arg(args, kwargs, 3, "padding", 0),
        )
        return Counts.elementwise(flops=counts.flops)

    return avg_pool_function_counts


def _adaptive_avg_pool_function_rule(ndim: int) -> Callable[[tuple, dict, object], Counts]:
    def adaptive_avg_pool_function_counts(args: tuple, kwargs: dict, out) -> Counts:
        return Counts.elementwise(flops=_adaptive_avg(args[0].shape, out.shape, ndim).flops)

    return adaptive_avg_pool_function_counts


for _ndim, _avg, _adaptive in (
    (1, F.avg_pool1d, F.adaptive_avg_pool1d),
    (2, F.avg_pool2d, F.adaptive_avg_pool2d),
    (3, F.avg_pool3d, F.adaptive_avg_pool3d),
):
    function_rule(_avg)(_avg_pool_function_rule(_ndim))
    function_rule(_adaptive)(_adaptive_avg_pool_function_rule(_ndim))


@function_rule(F.interpolate, F.upsample)
def interpolate_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # interpolate(input, size, scale_factor, mode="nearest", ...)
    mode = arg(args, kwargs, 3, "mode", "nearest")
    return Counts.elementwise(flops=interpolate_counts(args[0].shape, out.shape, mode).flops)


free_functions(
    F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.max_unpool1d, F.max_unpool2d, F.max_unpool3d,
)
