"""Elementwise arithmetic and reductions on floating-point tensors: 0 MACs, FLOPs per element.

Integer and boolean results are never counted (the capture skips calls with no floating-point
output). Binary arithmetic and unary math are 1 FLOP per output element (exp, log, sqrt and the
other transcendental functions included); reductions are 1 FLOP per input element they read.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hooks.counts import Counts
from hooks.registry import function_rule
from hooks.rules.common import arg

__all__ = ["per_output_element", "pointwise_counts", "reduction_counts"]


def _methods(*names: str) -> list[Callable]:
    """``torch.<name>`` and ``torch.Tensor.<name>`` for each name that exists, in-place forms too."""
    found = []
    for name in names:
        for owner in (torch, torch.Tensor):
            for variant in (name, f"{name}_"):
                f = getattr(owner, variant, None)
                if f is not None and f not in found:
                    found.append(f)
    return found


def per_output_element(flops: int) -> Callable[[tuple, dict, object], Counts]:
    """A rule counting ``flops`` per element of the result."""

    def rule(args: tuple, kwargs: dict, out) -> Counts:
        return Counts.elementwise(flops=flops * out.numel())

    rule.__name__ = rule.__qualname__ = f"pointwise_{flops}_counts"
    return rule


pointwise_counts = per_output_element(1)

# one operation per output element: a + b, a * b, exp(a), sqrt(a)...
function_rule(
    *_methods(
        "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "floor_divide",
        "remainder", "fmod", "pow", "float_power", "atan2", "hypot", "xlogy", "rsub",
        "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal",
        "square", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
        "atanh", "erf", "erfc", "erfinv", "frac", "logit",
    ),
    torch.Tensor.__rsub__, torch.Tensor.__rtruediv__, torch.Tensor.__floordiv__, torch.Tensor.__rfloordiv__,
    torch.Tensor.__pow__, torch.Tensor.__rpow__, torch.Tensor.__ipow__, torch.Tensor.__mod__,
)(pointwise_counts)

# two operations per output element: input + value * t1 * t2 counts the product and the sum
function_rule(*_methods("addcmul", "addcdiv"))(per_output_element(2))

# a + weight * (b - a)
function_rule(*_methods("lerp"))(per_output_element(3))


@function_rule(*_methods("sum", "nansum", "prod", "cumsum", "cumprod", "logcumsumexp"))
def reduction_counts(args: tuple, kwargs: dict, out) -> Counts:
    # one add (or multiply) per input element
    return Counts.elementwise(flops=args[0].numel())


@function_rule(*_methods("mean", "nanmean"))
def mean_counts(args: tuple, kwargs: dict, out) -> Counts:
    # one add per input element, one division per output element
    return Counts.elementwise(flops=args[0].numel() + out.numel())


@function_rule(*_methods("var", "std", "var_mean", "std_mean"))
def variance_counts(args: tuple, kwargs: dict, out) -> Counts:
    # sum of x and of x^2: 3 per input element
    return Counts.elementwise(flops=3 * args[0].numel())


@function_rule(*_methods("norm", "logsumexp"), torch.linalg.vector_norm, torch.linalg.norm)
def norm_reduction_counts(args: tuple, kwargs: dict, out) -> Counts:
    # |x|^p (or exp(x)) and a sum: 2 per input element
    return Counts.elementwise(flops=2 * args[0].numel())


@function_rule(F.normalize)
def normalize_counts(args: tuple, kwargs: dict, out) -> Counts:
    # x / max(||x||, eps): the norm (2 per element) and a division (1 per element)
    return Counts.elementwise(flops=3 * arg(args, kwargs, 0, "input").numel())


@function_rule(*_methods("index_add", "scatter_add"))
def accumulate_counts(args: tuple, kwargs: dict, out) -> Counts:
    # out[index] += alpha * source: one add per source element
    source = arg(args, kwargs, 3, "source", None)
    if source is None:
        source = arg(args, kwargs, 3, "src")
    return Counts.elementwise(flops=source.numel())
