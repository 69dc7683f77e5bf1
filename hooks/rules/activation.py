"""Activations and softmax: 0 MACs (thop's PReLU and Softmax numbers aside), FLOPs per element.

FLOPs count the arithmetic of each textbook formula per element, with exp, log, tanh and erf as
one FLOP each; comparisons, clamps and sign flips are free. The same constants serve the
functional forms (``F.gelu``, ``torch.sigmoid``...) in ``hooks.rules.functions``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import free_functions, free_modules, function_rule, module_rule
from hooks.rules.common import arg

__all__ = [
    "FLOPS_PER_ELEMENT",
    "gelu_flops_per_element",
    "softmax_dim",
    "softmax_flops",
    "log_softmax_flops",
    "softmax_counts",
    "softmin_counts",
    "log_softmax_counts",
    "prelu_counts",
    "gelu_counts",
    "glu_counts",
    "gelu_function_counts",
    "glu_function_counts",
    "softmax_function_counts",
    "log_softmax_function_counts",
]

# FLOPs per element of each activation's formula, keyed by a name the functional rules share.
FLOPS_PER_ELEMENT: dict[str, int] = {
    "leaky_relu": 1,  # x * slope where x < 0
    "rrelu": 1,  # x * slope where x < 0 (a fixed slope in eval)
    "prelu": 1,  # x * weight where x < 0
    "tanh": 1,  # tanh(x)
    "softshrink": 1,  # x -+ lambda outside [-lambda, lambda]
    "hardsigmoid": 2,  # (x + 3) / 6, clamped
    "softsign": 2,  # x / (1 + |x|)
    "tanhshrink": 2,  # x - tanh(x)
    "sigmoid": 3,  # 1 / (1 + exp(-x))
    "elu": 3,  # alpha * (exp(x) - 1) where x < 0
    "hardswish": 3,  # x * (x + 3) / 6, clamped
    "logsigmoid": 3,  # -log(1 + exp(-x))
    "silu": 4,  # x * sigmoid(x)
    "celu": 4,  # alpha * (exp(x / alpha) - 1) where x < 0
    "selu": 4,  # scale * elu(x)
    "mish": 5,  # x * tanh(log(1 + exp(x)))
    "softplus": 5,  # log(1 + exp(beta * x)) / beta
}


def gelu_flops_per_element(approximate: str) -> int:
    # "none": x * 0.5 * (1 + erf(x / sqrt(2)))                        5 FLOPs
    # "tanh": 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  9 FLOPs
    return 9 if approximate == "tanh" else 5


def softmax_dim(ndim: int, dim: int | None) -> int:
    """The dimension softmax reduces over; ``dim=None`` picks it as torch's legacy rule does."""
    if dim is None:
        return 0 if ndim in (0, 1, 3) else 1
    return dim


def softmax_flops(numel: int, n: int) -> int:
    # per row of n: n exp, n - 1 adds, n divisions (thop's count too)
    return (numel // n) * (3 * n - 1) if n else 0


def log_softmax_flops(numel: int, n: int) -> int:
    # per row of n: n exp, n - 1 adds, 1 log, n subtractions
    return (numel // n) * 3 * n if n else 0


def _row_length(x, dim: int | None) -> int:
    return x.shape[softmax_dim(x.dim(), dim)] if x.dim() else 1


@module_rule(nn.Softmax)
def softmax_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*] -> same, normalised along dim; thop's MACs are its FLOPs here
    x = inputs[0]
    flops = softmax_flops(x.numel(), _row_length(x, module.dim))
    return Counts.elementwise(flops=flops, macs=flops)


@module_rule(nn.Softmin, nn.Softmax2d)
def softmin_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # softmin(x) = softmax(-x); Softmax2d normalises over channels (dim -3)
    x = inputs[0]
    return Counts.elementwise(flops=softmax_flops(x.numel(), _row_length(x, getattr(module, "dim", -3))))


@module_rule(nn.LogSoftmax)
def log_softmax_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    x = inputs[0]
    return Counts.elementwise(flops=log_softmax_flops(x.numel(), _row_length(x, module.dim)))


@module_rule(nn.PReLU)
def prelu_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # thop counts one MAC per element
    numel = output.numel()
    return Counts.elementwise(flops=FLOPS_PER_ELEMENT["prelu"] * numel, macs=numel)


@module_rule(nn.GELU)
def gelu_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    return Counts.elementwise(flops=gelu_flops_per_element(module.approximate) * output.numel())


@module_rule(nn.GLU)
def glu_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [*, 2n, *] -> [*, n, *]: a * sigmoid(b), 4 FLOPs per output element
    return Counts.elementwise(flops=(FLOPS_PER_ELEMENT["sigmoid"] + 1) * output.numel())


def _per_element_rule(key: str) -> Callable[[nn.Module, tuple, object], Counts]:
    def rule(module: nn.Module, inputs: tuple, output) -> Counts:
        return Counts.elementwise(flops=FLOPS_PER_ELEMENT[key] * output.numel())

    rule.__name__ = rule.__qualname__ = f"{key}_counts"
    return rule


for _key, _types in {
    "leaky_relu": (nn.LeakyReLU,),
    "rrelu": (nn.RReLU,),
    "tanh": (nn.Tanh,),
    "softshrink": (nn.Softshrink,),
    "hardsigmoid": (nn.Hardsigmoid,),
    "softsign": (nn.Softsign,),
    "tanhshrink": (nn.Tanhshrink,),
    "sigmoid": (nn.Sigmoid,),
    "elu": (nn.ELU,),
    "hardswish": (nn.Hardswish,),
    "logsigmoid": (nn.LogSigmoid,),
    "silu": (nn.SiLU,),
    "celu": (nn.CELU,),
    "selu": (nn.SELU,),
    "mish": (nn.Mish,),
    "softplus": (nn.Softplus,),
}.items():
    module_rule(*_types)(_per_element_rule(_key))

# max(0, x), clamps and thresholds: comparisons only
free_modules(nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Threshold, nn.Hardshrink)


def _functional(*names: str) -> list:
    """``F.<name>``, ``torch.<name>`` and ``torch.Tensor.<name>`` (and in-place forms) that exist."""
    found = []
    for name in names:
        for owner in (F, torch, torch.Tensor):
            for variant in (name, f"{name}_"):
                f = getattr(owner, variant, None)
                if callable(f) and f not in found:
                    found.append(f)
    return found


def _per_element_function_rule(key: str) -> Callable[[tuple, dict, object], Counts]:
    def rule(args: tuple, kwargs: dict, out) -> Counts:
        return Counts.elementwise(flops=FLOPS_PER_ELEMENT[key] * out.numel())

    rule.__name__ = rule.__qualname__ = f"{key}_function_counts"
    return rule


for _key in FLOPS_PER_ELEMENT:
    if _key != "prelu":
        function_rule(*_functional(_key))(_per_element_function_rule(_key))
function_rule(F.prelu)(_per_element_function_rule("prelu"))


@function_rule(F.gelu)
def gelu_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    approximate = arg(args, kwargs, 1, "approximate", "none")
    return Counts.elementwise(flops=gelu_flops_per_element(approximate) * out.numel())


@function_rule(F.glu)
def glu_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    return Counts.elementwise(flops=(FLOPS_PER_ELEMENT["sigmoid"] + 1) * out.numel())


@function_rule(*_functional("softmax", "softmin"))
def softmax_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # 0 MACs as a function: MACs count matmul-like work only outside thop's module types
    x = args[0]
    return Counts.elementwise(flops=softmax_flops(x.numel(), _row_length(x, arg(args, kwargs, 1, "dim", None))))


@function_rule(*_functional("log_softmax"))
def log_softmax_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    x = args[0]
    return Counts.elementwise(flops=log_softmax_flops(x.numel(), _row_length(x, arg(args, kwargs, 1, "dim", None))))


free_functions(*_functional("relu", "relu6", "hardtanh", "threshold", "hardshrink"))
