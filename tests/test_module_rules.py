"""Closed-form counts of every registered module rule, each number written as its formula.

Each case profiles one layer on its own and asserts its MACs, FLOPs and matmul FLOPs. The
conventions (hooks/counts.py): matmul-like work is 2 FLOPs per MAC, all of them matmul FLOPs;
elementwise work has FLOPs per element and, for the module types thop counts, thop's MACs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pytest
import thop
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.flop_counter import FlopCounterMode

from hooks import REGISTRY
from profiler import profile

pytestmark = [
    pytest.mark.filterwarnings("error::profiler.UncountedWarning"),
    pytest.mark.filterwarnings("ignore:Implicit dimension choice"),
    pytest.mark.filterwarnings("ignore:This API is being deprecated"),
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
]


class Expected(NamedTuple):
    macs: int
    flops: int
    matmul_flops: int = 0


def matmul(macs: int) -> Expected:
    """Matmul-like work: one multiply and one add per MAC, all of it matmul FLOPs."""
    return Expected(macs, 2 * macs, 2 * macs)


def elementwise(flops: int, macs: int = 0) -> Expected:
    """Elementwise work: its FLOPs, and thop's MACs for the module types thop counts."""
    return Expected(macs, flops)


def recurrent(matmul_macs: int, elementwise_ops: int, steps: int) -> Expected:
    """thop's recurrent counts per cell step: MACs = matmul + elementwise, FLOPs = 2 * matmul + elementwise."""
    return Expected(
        (matmul_macs + elementwise_ops) * steps,
        (2 * matmul_macs + elementwise_ops) * steps,
        2 * matmul_macs * steps,
    )


def attention(projections: int, scores: int, softmax: int, scaling: int) -> Expected:
    """Projections and score/value matmuls are matmul-like; softmax and scaling add FLOPs only."""
    macs = projections + scores
    return Expected(macs, 2 * macs + softmax + scaling, 2 * macs)


FREE = Expected(0, 0)

Inputs = Sequence[tuple[int, ...]] | Callable[[], tuple]


def build_inputs(inputs: Inputs) -> tuple:
    """Random tensors of the given shapes, or whatever a factory builds (indices, packed sequences)."""
    if callable(inputs):
        return inputs()
    return tuple(torch.randn(shape) for shape in inputs)


def counts_of(layer: nn.Module, inputs: tuple) -> Expected:
    result = profile(layer, inputs=inputs)
    return Expected(result.total_macs, result.total_flops, result.matmul_flops)


def pooled(pool: nn.Module, shape: tuple[int, ...]) -> Callable[[], tuple]:
    """A max-unpool's inputs: a max-pool's output and its indices."""
    return lambda: pool(torch.randn(shape))


def packed(lengths: list[int], size: int) -> Callable[[], tuple]:
    """A packed batch of sequences of ``lengths`` (longest first), ``size`` features each."""
    return lambda: (pack_padded_sequence(torch.randn(lengths[0], len(lengths), size), lengths),)


def indices(*rows: list[int], **extra: Any) -> Callable[[], tuple]:
    """Long indices (one row per bag, or flat with offsets), then offsets and per-sample weights if asked."""

    def build() -> tuple:
        x = torch.tensor(rows[0] if len(rows) == 1 else list(rows))
        offsets = torch.tensor(extra["offsets"]) if "offsets" in extra else None
        if "weights" not in extra:
            return (x,) if offsets is None else (x, offsets)
        return x, offsets, torch.rand(x.shape)

    return build


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# --- convolutions: MACs = output elements x (Cin / groups) x kernel elements (bias not counted)

CONV_CASES = [
    pytest.param(nn.Conv1d(4, 6, 3), [(2, 4, 10)], matmul(2 * 6 * 8 * (4 * 3)), id="conv1d-basic"),
    pytest.param(
        nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2), [(2, 4, 11)],
        matmul(2 * 6 * 6 * (4 * 3)), id="conv1d-stride-padding-dilation",
    ),
    pytest.param(
        nn.Conv1d(4, 6, 3, groups=2, bias=False), [(2, 4, 10)],
        matmul(2 * 6 * 8 * ((4 // 2) * 3)), id="conv1d-groups-no-bias",
    ),
    pytest.param(
        nn.Conv1d(4, 6, 4, padding="same", dilation=2), [(2, 4, 10)],
        matmul(2 * 6 * 10 * (4 * 4)), id="conv1d-same-dilation",
    ),
    pytest.param(
        nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect"), [(2, 4, 10)],
        matmul(2 * 6 * 10 * (4 * 3)), id="conv1d-reflect",
    ),
    pytest.param(nn.Conv1d(4, 6, 3), [(4, 10)], matmul(6 * 8 * (4 * 3)), id="conv1d-unbatched"),
    pytest.param(nn.Conv2d(3, 8, 3), [(1, 3, 8, 8)], matmul(1 * 8 * 6 * 6 * (3 * 3 * 3)), id="conv2d-basic"),
    pytest.param(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), [(2, 3, 9, 9)],
        matmul(2 * 8 * 5 * 5 * (3 * 3 * 3)), id="conv2d-stride-padding-no-bias",
    ),
    pytest.param(
        nn.Conv2d(4, 8, (3, 5), groups=2, dilation=(2, 1)), [(1, 4, 10, 10)],
        matmul(1 * 8 * 6 * 6 * ((4 // 2) * 3 * 5)), id="conv2d-groups-dilation-rect",
    ),
    pytest.param(
        nn.Conv2d(8, 8, 3, groups=8), [(1, 8, 5, 5)], matmul(1 * 8 * 3 * 3 * (1 * 3 * 3)), id="conv2d-depthwise",
    ),
    pytest.param(
        nn.Conv2d(4, 8, 3, groups=4, padding=1), [(1, 4, 5, 5)],
        matmul(1 * 8 * 5 * 5 * (1 * 3 * 3)), id="conv2d-depthwise-multiplier",
    ),
    pytest.param(
        nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"), [(1, 3, 6, 6)],
        matmul(1 * 4 * 6 * 6 * (3 * 3 * 3)), id="conv2d-same-reflect",
    ),
    pytest.param(
        nn.Conv2d(3, 4, 3, padding=2, padding_mode="circular"), [(1, 3, 6, 6)],
        matmul(1 * 4 * 8 * 8 * (3 * 3 * 3)), id="conv2d-circular",
    ),
    # thop reads Cin from input.shape[1] (8 here) and gets unbatched input wrong
    pytest.param(nn.Conv2d(3, 8, 3), [(3, 8, 8)], matmul(8 * 6 * 6 * (3 * 3 * 3)), id="conv2d-unbatched"),
    pytest.param(
        nn.Conv3d(2, 4, 3, stride=(1, 2, 2), padding=1), [(1, 2, 4, 6, 6)],
        matmul(1 * 4 * 4 * 3 * 3 * (2 * 3 * 3 * 3)), id="conv3d-stride-padding",
    ),
    pytest.param(
        nn.Conv3d(4, 4, (1, 3, 3), groups=2, bias=False), [(4, 3, 5, 5)],
        matmul(4 * 3 * 3 * 3 * ((4 // 2) * 1 * 3 * 3)), id="conv3d-groups-unbatched",
    ),
    pytest.param(
        nn.Conv3d(2, 3, 3, padding="same", padding_mode="replicate"), [(1, 2, 4, 4, 4)],
        matmul(1 * 3 * 4 * 4 * 4 * (2 * 3 * 3 * 3)), id="conv3d-same-replicate",
    ),
]

# --- transposed convolutions: MACs = input elements x (Cout / groups) x kernel elements

CONV_TRANSPOSE_CASES = [
    pytest.param(
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), [(1, 64, 16, 16)],
        matmul(1 * 64 * 16 * 16 * (32 * 4 * 4)), id="conv-transpose2d-issue-example",
    ),
    pytest.param(
        nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1), [(2, 4, 5)],
        matmul(2 * 4 * 5 * (6 * 3)), id="conv-transpose1d-output-padding",
    ),
    pytest.param(
        nn.ConvTranspose1d(4, 6, 3, groups=2, bias=False), [(2, 4, 5)],
        matmul(2 * 4 * 5 * ((6 // 2) * 3)), id="conv-transpose1d-groups-no-bias",
    ),
    pytest.param(
        nn.ConvTranspose1d(4, 6, 3, stride=2), [(4, 5)], matmul(4 * 5 * (6 * 3)), id="conv-transpose1d-unbatched",
    ),
    pytest.param(
        nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2, output_padding=1), [(2, 6, 5, 5)],
        matmul(2 * 6 * 5 * 5 * ((4 // 2) * 3 * 3)), id="conv-transpose2d-groups-output-padding",
    ),
    pytest.param(
        nn.ConvTranspose2d(3, 2, (2, 3), stride=(1, 2), padding=1, dilation=2), [(3, 4, 4)],
        matmul(3 * 4 * 4 * (2 * 2 * 3)), id="conv-transpose2d-dilation-unbatched",
    ),
    pytest.param(
        nn.ConvTranspose3d(2, 4, (2, 3, 3), stride=2, padding=1, output_padding=1), [(1, 2, 3, 4, 4)],
        matmul(1 * 2 * 3 * 4 * 4 * (4 * 2 * 3 * 3)), id="conv-transpose3d-output-padding",
    ),
    pytest.param(
        nn.ConvTranspose3d(4, 4, 3, groups=4, bias=False), [(1, 4, 3, 3, 3)],
        matmul(1 * 4 * 3 * 3 * 3 * ((4 // 4) * 3 * 3 * 3)), id="conv-transpose3d-depthwise",
    ),
]

# --- Linear: in_features MACs per output element; Bilinear contracts in1 then in2 per output

LINEAR_CASES = [
    pytest.param(nn.Linear(16, 8), [(4, 16)], matmul(4 * 8 * 16), id="linear-2d"),
    pytest.param(nn.Linear(16, 8), [(2, 5, 16)], matmul(2 * 5 * 8 * 16), id="linear-3d"),
    pytest.param(nn.Linear(16, 8, bias=False), [(2, 3, 5, 16)], matmul(2 * 3 * 5 * 8 * 16), id="linear-4d-no-bias"),
    pytest.param(nn.Linear(16, 8), [(16,)], matmul(8 * 16), id="linear-unbatched"),
    pytest.param(nn.Linear(16, 8, bias=False), [(16,)], matmul(8 * 16), id="linear-unbatched-no-bias"),
    pytest.param(nn.Bilinear(3, 4, 5), [(2, 3), (2, 4)], matmul(2 * 5 * (3 * 4 + 4)), id="bilinear-2d"),
    pytest.param(
        nn.Bilinear(3, 4, 5, bias=False), [(2, 6, 3), (2, 6, 4)],
        matmul(2 * 6 * 5 * (3 * 4 + 4)), id="bilinear-3d-no-bias",
    ),
    pytest.param(nn.Bilinear(3, 4, 5), [(3,), (4,)], matmul(5 * (3 * 4 + 4)), id="bilinear-unbatched"),
    pytest.param(torch.ao.nn.quantized.dynamic.Linear(16, 8), [(4, 16)], matmul(4 * 8 * 16), id="quantized-dynamic-linear"),
    pytest.param(
        torch.ao.nn.quantized.Linear(16, 8), lambda: (torch.quantize_per_tensor(torch.randn(4, 16), 0.1, 0, torch.quint8),),
        matmul(4 * 8 * 16), id="quantized-linear",
    ),
]

# --- norms. MACs (thop): 2 per element, x 2 when affine. FLOPs per element: 3 for the
# statistics when they come from the input (not running stats in eval), 2 to normalise,
# 1 for the weight and 1 for the bias. RMSNorm: 2 for the mean square, 1 to normalise, 1 weight.

NORM_CASES = [
    pytest.param(
        nn.BatchNorm1d(4), [(8, 4)],
        elementwise(flops=8 * 4 * (2 + 1 + 1), macs=2 * 8 * 4 * 2), id="batchnorm1d-2d-input",
    ),
    pytest.param(
        nn.BatchNorm1d(4, affine=False), [(2, 4, 6)],
        elementwise(flops=2 * 4 * 6 * 2, macs=2 * 2 * 4 * 6), id="batchnorm1d-no-affine",
    ),
    pytest.param(
        nn.BatchNorm2d(3), [(2, 3, 4, 4)],
        elementwise(flops=2 * 3 * 4 * 4 * (2 + 1 + 1), macs=2 * 2 * 3 * 4 * 4 * 2), id="batchnorm2d",
    ),
    pytest.param(
        nn.BatchNorm2d(3, track_running_stats=False), [(2, 3, 4, 4)],
        elementwise(flops=2 * 3 * 4 * 4 * (3 + 2 + 1 + 1), macs=2 * 2 * 3 * 4 * 4 * 2),
        id="batchnorm2d-batch-stats",
    ),
    pytest.param(
        nn.BatchNorm3d(2, affine=False, track_running_stats=False), [(2, 2, 3, 3, 3)],
        elementwise(flops=2 * 2 * 3 * 3 * 3 * (3 + 2), macs=2 * 2 * 2 * 3 * 3 * 3),
        id="batchnorm3d-no-affine-batch-stats",
    ),
    pytest.param(
        nn.SyncBatchNorm(3), [(2, 3, 4, 4)],
        elementwise(flops=2 * 3 * 4 * 4 * (2 + 1 + 1), macs=2 * 2 * 3 * 4 * 4 * 2), id="syncbatchnorm",
    ),
    pytest.param(
        nn.LayerNorm(8), [(2, 5, 8)],
        elementwise(flops=2 * 5 * 8 * (3 + 2 + 1 + 1), macs=2 * 2 * 5 * 8 * 2), id="layernorm",
    ),
    pytest.param(
        nn.LayerNorm((5, 8), elementwise_affine=False), [(2, 5, 8)],
        elementwise(flops=2 * 5 * 8 * (3 + 2), macs=2 * 2 * 5 * 8), id="layernorm-no-affine",
    ),
    pytest.param(
        nn.LayerNorm(8, bias=False), [(2, 5, 8)],
        elementwise(flops=2 * 5 * 8 * (3 + 2 + 1), macs=2 * 2 * 5 * 8 * 2), id="layernorm-no-bias",
    ),
    pytest.param(
        nn.InstanceNorm1d(3), [(2, 3, 5)],
        elementwise(flops=2 * 3 * 5 * (3 + 2), macs=2 * 2 * 3 * 5), id="instancenorm1d",
    ),
    pytest.param(
        nn.InstanceNorm1d(3, affine=True), [(3, 5)],
        elementwise(flops=3 * 5 * (3 + 2 + 1 + 1), macs=2 * 3 * 5 * 2), id="instancenorm1d-affine-unbatched",
    ),
    pytest.param(
        nn.InstanceNorm2d(3, affine=True), [(2, 3, 4, 4)],
        elementwise(flops=2 * 3 * 4 * 4 * (3 + 2 + 1 + 1), macs=2 * 2 * 3 * 4 * 4 * 2), id="instancenorm2d-affine",
    ),
    pytest.param(
        nn.InstanceNorm2d(3, track_running_stats=True), [(2, 3, 4, 4)],
        elementwise(flops=2 * 3 * 4 * 4 * 2, macs=2 * 2 * 3 * 4 * 4), id="instancenorm2d-running-stats",
    ),
    pytest.param(
        nn.InstanceNorm3d(2, affine=True, track_running_stats=True), [(1, 2, 3, 3, 3)],
        elementwise(flops=1 * 2 * 3 * 3 * 3 * (2 + 1 + 1), macs=2 * 1 * 2 * 3 * 3 * 3 * 2),
        id="instancenorm3d-affine-running-stats",
    ),
    pytest.param(
        nn.GroupNorm(2, 4), [(2, 4, 3, 3)],
        elementwise(flops=2 * 4 * 3 * 3 * (3 + 2 + 1 + 1), macs=2 * 2 * 4 * 3 * 3 * 2), id="groupnorm",
    ),
    pytest.param(
        nn.GroupNorm(2, 4, affine=False), [(2, 4, 5)],
        elementwise(flops=2 * 4 * 5 * (3 + 2), macs=2 * 2 * 4 * 5), id="groupnorm-no-affine",
    ),
    pytest.param(
        nn.RMSNorm(8), [(2, 5, 8)],
        elementwise(flops=2 * 5 * 8 * (2 + 1 + 1), macs=2 * 2 * 5 * 8 * 2), id="rmsnorm",
    ),
    pytest.param(
        nn.RMSNorm((5, 8), elementwise_affine=False), [(2, 5, 8)],
        elementwise(flops=2 * 5 * 8 * (2 + 1), macs=2 * 2 * 5 * 8), id="rmsnorm-no-affine",
    ),
]

# --- activations. Softmax: per row of n, n exp + (n - 1) adds + n divisions (thop's MACs for
# nn.Softmax only); LogSoftmax: n exp + (n - 1) adds + 1 log + n subtractions. dim=None picks
# dim 0 for 0-, 1- and 3-D input and dim 1 otherwise, as torch does.

ACTIVATION_CASES = [
    pytest.param(nn.PReLU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * 1, macs=2 * 3 * 4), id="prelu"),
    pytest.param(
        nn.PReLU(3), [(2, 3, 4, 4)], elementwise(flops=2 * 3 * 4 * 4 * 1, macs=2 * 3 * 4 * 4), id="prelu-per-channel",
    ),
    pytest.param(
        nn.Softmax(dim=1), [(2, 5, 3)],
        elementwise(flops=2 * 3 * (3 * 5 - 1), macs=2 * 3 * (3 * 5 - 1)), id="softmax-dim1",
    ),
    pytest.param(
        nn.Softmax(dim=-1), [(2, 5, 3)],
        elementwise(flops=2 * 5 * (3 * 3 - 1), macs=2 * 5 * (3 * 3 - 1)), id="softmax-negative-dim",
    ),
    pytest.param(
        nn.Softmax(), [(2, 5, 3)],
        elementwise(flops=5 * 3 * (3 * 2 - 1), macs=5 * 3 * (3 * 2 - 1)), id="softmax-dim-none-3d",
    ),
    pytest.param(
        nn.Softmax(), [(2, 3, 4, 5)],
        elementwise(flops=2 * 4 * 5 * (3 * 3 - 1), macs=2 * 4 * 5 * (3 * 3 - 1)), id="softmax-dim-none-4d",
    ),
    pytest.param(nn.Softmin(dim=1), [(2, 5, 3)], elementwise(flops=2 * 3 * (3 * 5 - 1)), id="softmin"),
    pytest.param(nn.Softmin(), [(4, 6)], elementwise(flops=4 * (3 * 6 - 1)), id="softmin-dim-none-2d"),
    pytest.param(nn.Softmax2d(), [(2, 3, 4, 5)], elementwise(flops=2 * 4 * 5 * (3 * 3 - 1)), id="softmax2d"),
    pytest.param(nn.Softmax2d(), [(3, 4, 5)], elementwise(flops=4 * 5 * (3 * 3 - 1)), id="softmax2d-unbatched"),
    pytest.param(nn.LogSoftmax(dim=-1), [(2, 5, 3)], elementwise(flops=2 * 5 * (3 * 3)), id="log-softmax-negative-dim"),
    pytest.param(nn.LogSoftmax(), [(4, 6)], elementwise(flops=4 * (3 * 6)), id="log-softmax-dim-none"),
    # x * 0.5 * (1 + erf(x / sqrt(2))): divide, erf, add, multiply, multiply
    pytest.param(nn.GELU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * 5), id="gelu"),
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))): x^3 (2), then 7 more
    pytest.param(nn.GELU(approximate="tanh"), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (2 + 7)), id="gelu-tanh"),
    # a * sigmoid(b) per output element: sigmoid (3) and a product
    pytest.param(nn.GLU(), [(2, 3, 8)], elementwise(flops=2 * 3 * 4 * (3 + 1)), id="glu"),
    pytest.param(nn.GLU(dim=1), [(2, 6, 5)], elementwise(flops=2 * 3 * 5 * (3 + 1)), id="glu-dim1"),
    # per element, on (2, 3, 4)
    pytest.param(nn.LeakyReLU(0.1), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * 1), id="leaky-relu"),  # x * slope
    pytest.param(nn.RReLU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * 1), id="rrelu"),  # fixed slope in eval
    pytest.param(nn.Tanh(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * 1), id="tanh"),
    pytest.param(nn.Softshrink(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * 1), id="softshrink"),  # x -+ lambda
    pytest.param(nn.Hardsigmoid(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1)), id="hardsigmoid"),  # (x+3)/6
    pytest.param(nn.Softsign(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1)), id="softsign"),  # x/(1+|x|)
    pytest.param(nn.Tanhshrink(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1)), id="tanhshrink"),  # x-tanh(x)
    # 1 / (1 + exp(-x)): exp, add, divide
    pytest.param(nn.Sigmoid(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1)), id="sigmoid"),
    # alpha * (exp(x) - 1): exp, subtract, multiply
    pytest.param(nn.ELU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1)), id="elu"),
    # x * (x + 3) / 6: add, multiply, divide
    pytest.param(nn.Hardswish(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1)), id="hardswish"),
    # -log(1 + exp(-x)): exp, add, log
    pytest.param(nn.LogSigmoid(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1)), id="logsigmoid"),
    # x * sigmoid(x)
    pytest.param(nn.SiLU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (3 + 1)), id="silu"),
    # alpha * (exp(x / alpha) - 1): divide, exp, subtract, multiply
    pytest.param(nn.CELU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1 + 1)), id="celu"),
    # scale * elu(x)
    pytest.param(nn.SELU(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (3 + 1)), id="selu"),
    # x * tanh(log(1 + exp(x))): exp, add, log, tanh, multiply
    pytest.param(nn.Mish(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1 + 1 + 1)), id="mish"),
    # log(1 + exp(beta * x)) / beta: multiply, exp, add, log, divide
    pytest.param(nn.Softplus(), [(2, 3, 4)], elementwise(flops=2 * 3 * 4 * (1 + 1 + 1 + 1 + 1)), id="softplus"),
]

# --- average pooling. AvgPool: MACs = outputs x (window + 1), FLOPs = outputs x window, with
# window = the input elements an output reads (padding and ceil_mode overhang hold none). Adaptive pooling window i of an
# in -> out dimension covers [floor(i * in / out), ceil((i + 1) * in / out)); windows factor per
# dimension, so FLOPs = planes x product of per-dimension window sums, MACs = FLOPs + outputs.

POOLING_CASES = [
    pytest.param(
        nn.AvgPool1d(3), [(2, 4, 9)],
        elementwise(flops=2 * 4 * 3 * 3, macs=2 * 4 * 3 * (3 + 1)), id="avgpool1d-int",
    ),
    pytest.param(
        nn.AvgPool1d((2,)), [(2, 4, 9)],
        elementwise(flops=2 * 4 * 4 * 2, macs=2 * 4 * 4 * (2 + 1)), id="avgpool1d-tuple",
    ),
    # windows [-1, 2), [0, 3) ... [6, 9), [7, 10): padding holds no elements, so 2, 3 x 7, 2
    pytest.param(
        nn.AvgPool1d(3, stride=1, padding=1), [(2, 4, 9)],
        elementwise(flops=2 * 4 * (2 + 7 * 3 + 2), macs=2 * 4 * (2 + 7 * 3 + 2) + 2 * 4 * 9), id="avgpool1d-padding",
    ),
    # ceil_mode adds no output here: (7 - 3) / 2 is whole
    pytest.param(
        nn.AvgPool1d(3, stride=2, ceil_mode=True), [(2, 4, 7)],
        elementwise(flops=2 * 4 * 3 * 3, macs=2 * 4 * 3 * (3 + 1)), id="avgpool1d-ceil-mode-exact",
    ),
    # windows [0, 3), [2, 5), [4, 6): the last one holds 2 elements and PyTorch divides by 2
    pytest.param(
        nn.AvgPool1d(3, stride=2, ceil_mode=True), [(1, 2, 6)],
        elementwise(flops=1 * 2 * (3 + 3 + 2), macs=1 * 2 * ((3 + 1) + (3 + 1) + (2 + 1))),
        id="avgpool1d-ceil-mode-overhang",
    ),
    # windows [-1, 2), [1, 4), [3, 6) without the padding: 2, 3, 3 elements
    pytest.param(
        nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False), [(1, 2, 6)],
        elementwise(flops=1 * 2 * (2 + 3 + 3), macs=1 * 2 * ((2 + 1) + (3 + 1) + (3 + 1))),
        id="avgpool1d-exclude-pad",
    ),
    pytest.param(
        nn.AvgPool2d(2), [(1, 3, 4, 4)],
        elementwise(flops=1 * 3 * 2 * 2 * (2 * 2), macs=1 * 3 * 2 * 2 * (2 * 2 + 1)), id="avgpool2d-int",
    ),
    pytest.param(
        nn.AvgPool2d(2), [(3, 4, 4)],
        elementwise(flops=3 * 2 * 2 * (2 * 2), macs=3 * 2 * 2 * (2 * 2 + 1)), id="avgpool2d-unbatched",
    ),
    # rows: windows [-1, 1), [1, 3), [3, 5) hold 1, 2, 1; columns: [-1, 2), 4 full, [4, 7) hold 2, 3 x 4, 2
    pytest.param(
        nn.AvgPool2d((2, 3), stride=(2, 1), padding=(1, 1)), [(1, 3, 4, 6)],
        elementwise(flops=1 * 3 * (1 + 2 + 1) * (2 + 4 * 3 + 2), macs=1 * 3 * (1 + 2 + 1) * (2 + 4 * 3 + 2) + 1 * 3 * 3 * 6),
        id="avgpool2d-tuple-stride-padding",
    ),
    # windows per dimension [0, 2), [2, 4), [4, 5): 2, 2, 1 elements
    pytest.param(
        nn.AvgPool2d(2, ceil_mode=True), [(1, 1, 5, 5)],
        elementwise(flops=1 * 1 * (2 + 2 + 1) * (2 + 2 + 1), macs=1 * 1 * (2 + 2 + 1) * (2 + 2 + 1) + 1 * 1 * 3 * 3),
        id="avgpool2d-ceil-mode-overhang",
    ),
    pytest.param(
        nn.AvgPool3d(2), [(1, 2, 4, 4, 4)],
        elementwise(flops=1 * 2 * 2 * 2 * 2 * (2 * 2 * 2), macs=1 * 2 * 2 * 2 * 2 * (2 * 2 * 2 + 1)),
        id="avgpool3d-int",
    ),
    pytest.param(
        nn.AvgPool3d((1, 2, 2)), [(1, 2, 3, 4, 4)],
        elementwise(flops=1 * 2 * 3 * 2 * 2 * (1 * 2 * 2), macs=1 * 2 * 3 * 2 * 2 * (1 * 2 * 2 + 1)),
        id="avgpool3d-tuple",
    ),
    pytest.param(
        nn.AdaptiveAvgPool1d(3), [(2, 4, 9)],
        elementwise(flops=2 * 4 * (3 + 3 + 3), macs=2 * 4 * (3 + 3 + 3) + 2 * 4 * 3),
        id="adaptive-avgpool1d-divisible",
    ),
    # 7 -> 3: windows [0, 3), [2, 5), [4, 7)
    pytest.param(
        nn.AdaptiveAvgPool1d(3), [(2, 4, 7)],
        elementwise(flops=2 * 4 * (3 + 3 + 3), macs=2 * 4 * (3 + 3 + 3) + 2 * 4 * 3),
        id="adaptive-avgpool1d-7-to-3",
    ),
    # 5 -> 3: windows [0, 2), [1, 4), [3, 5)
    pytest.param(
        nn.AdaptiveAvgPool1d(3), [(1, 2, 5)],
        elementwise(flops=1 * 2 * (2 + 3 + 2), macs=1 * 2 * (2 + 3 + 2) + 1 * 2 * 3),
        id="adaptive-avgpool1d-5-to-3",
    ),
    pytest.param(
        nn.AdaptiveAvgPool2d(1), [(2, 3, 4, 4)],
        elementwise(flops=2 * 3 * (4 * 4), macs=2 * 3 * (4 * 4) + 2 * 3 * 1), id="adaptive-avgpool2d-global",
    ),
    # 7 -> 3: [0, 3), [2, 5), [4, 7); 6 -> 4: [0, 2), [1, 3), [3, 5), [4, 6)
    pytest.param(
        nn.AdaptiveAvgPool2d((3, 4)), [(1, 2, 7, 6)],
        elementwise(
            flops=1 * 2 * (3 + 3 + 3) * (2 + 2 + 2 + 2),
            macs=1 * 2 * (3 + 3 + 3) * (2 + 2 + 2 + 2) + 1 * 2 * 3 * 4,
        ),
        id="adaptive-avgpool2d-7x6-to-3x4",
    ),
    # None keeps the height: five windows of 1
    pytest.param(
        nn.AdaptiveAvgPool2d((None, 3)), [(1, 2, 5, 7)],
        elementwise(flops=1 * 2 * (1 + 1 + 1 + 1 + 1) * (3 + 3 + 3), macs=1 * 2 * 5 * (3 + 3 + 3) + 1 * 2 * 5 * 3),
        id="adaptive-avgpool2d-none",
    ),
    # 2 -> 3 (growing): windows [0, 1), [0, 2), [1, 2)
    pytest.param(
        nn.AdaptiveAvgPool2d(3), [(2, 2, 2)],
        elementwise(flops=2 * (1 + 2 + 1) * (1 + 2 + 1), macs=2 * (1 + 2 + 1) * (1 + 2 + 1) + 2 * 3 * 3),
        id="adaptive-avgpool2d-growing-unbatched",
    ),
    # 4 -> 2: [0, 2), [2, 4); 7 -> 3: [0, 3), [2, 5), [4, 7); 5 -> 1: [0, 5)
    pytest.param(
        nn.AdaptiveAvgPool3d((2, 3, 1)), [(1, 2, 4, 7, 5)],
        elementwise(
            flops=1 * 2 * (2 + 2) * (3 + 3 + 3) * 5,
            macs=1 * 2 * (2 + 2) * (3 + 3 + 3) * 5 + 1 * 2 * 2 * 3 * 1,
        ),
        id="adaptive-avgpool3d",
    ),
]

# --- upsampling, per output element: MACs are thop's constants (nearest 1, linear 5, bilinear 11,
# bicubic 224 + 35, trilinear 13 * 2 + 5); FLOPs count 3 per 1-D linear interpolation
# (a + t * (b - a)) and 7 per 1-D cubic one (4 products, 3 sums). "area" is adaptive average pooling.

UPSAMPLE_CASES = [
    pytest.param(
        nn.Upsample(scale_factor=2), [(1, 2, 3, 3)],
        elementwise(flops=1 * 2 * 6 * 6 * 0, macs=1 * 2 * 6 * 6 * 1), id="upsample-nearest",
    ),
    pytest.param(
        nn.Upsample(scale_factor=(1, 2, 2)), [(1, 1, 2, 3, 3)],
        elementwise(flops=1 * 1 * 2 * 6 * 6 * 0, macs=1 * 1 * 2 * 6 * 6 * 1), id="upsample-nearest-3d",
    ),
    pytest.param(
        nn.Upsample(size=7, mode="nearest-exact"), [(1, 2, 5)],
        elementwise(flops=1 * 2 * 7 * 0, macs=1 * 2 * 7 * 1), id="upsample-nearest-exact",
    ),
    pytest.param(
        nn.Upsample(scale_factor=2, mode="linear"), [(1, 2, 5)],
        elementwise(flops=1 * 2 * 10 * 3, macs=1 * 2 * 10 * 5), id="upsample-linear",
    ),
    pytest.param(
        nn.Upsample(scale_factor=2, mode="bilinear"), [(1, 2, 3, 4)],
        elementwise(flops=1 * 2 * 6 * 8 * (3 * 3), macs=1 * 2 * 6 * 8 * 11), id="upsample-bilinear",
    ),
    pytest.param(
        nn.Upsample(size=(6, 5), mode="bicubic", align_corners=True), [(1, 1, 4, 4)],
        elementwise(flops=1 * 1 * 6 * 5 * (5 * (4 + 3)), macs=1 * 1 * 6 * 5 * (224 + 35)), id="upsample-bicubic",
    ),
    pytest.param(
        nn.Upsample(scale_factor=2, mode="trilinear"), [(1, 1, 2, 3, 3)],
        elementwise(flops=1 * 1 * 4 * 6 * 6 * (7 * 3), macs=1 * 1 * 4 * 6 * 6 * (13 * 2 + 5)), id="upsample-trilinear",
    ),
    # 7 -> 3: [0, 3), [2, 5), [4, 7); 6 -> 4: [0, 2), [1, 3), [3, 5), [4, 6)
    pytest.param(
        nn.Upsample(size=(3, 4), mode="area"), [(1, 2, 7, 6)],
        elementwise(
            flops=1 * 2 * (3 + 3 + 3) * (2 + 2 + 2 + 2),
            macs=1 * 2 * (3 + 3 + 3) * (2 + 2 + 2 + 2) + 1 * 2 * 3 * 4,
        ),
        id="upsample-area",
    ),
    # 3 -> 6: six windows of 1
    pytest.param(
        nn.Upsample(scale_factor=2, mode="area"), [(1, 2, 3)],
        elementwise(flops=1 * 2 * (1 + 1 + 1 + 1 + 1 + 1), macs=1 * 2 * 6 + 1 * 2 * 6), id="upsample-area-1d-growing",
    ),
    pytest.param(
        nn.UpsamplingNearest2d(scale_factor=2), [(1, 2, 3, 3)],
        elementwise(flops=1 * 2 * 6 * 6 * 0, macs=1 * 2 * 6 * 6 * 1), id="upsampling-nearest2d",
    ),
    pytest.param(
        nn.UpsamplingBilinear2d(size=(5, 7)), [(1, 2, 3, 4)],
        elementwise(flops=1 * 2 * 5 * 7 * (3 * 3), macs=1 * 2 * 5 * 7 * 11), id="upsampling-bilinear2d",
    ),
]

# --- recurrent layers, per cell step (thop's formulas), input size i, hidden size h:
#   RNN   matmul h * (i + h);          elementwise h (the add) + 2h bias adds
#   GRU   matmul 3h * (i + h);         elementwise 3h + 6h bias adds + h (r * .) + 3h (h' = (1 - z) * n + z * h)
#   LSTM  matmul 4h * (i + r) + p * h; elementwise 4h + 8h bias adds + 3h (c' = f * c + i * g) + h (o * tanh(c'))
# with r = p = proj_size when set (r = h otherwise). Steps = sequences x time steps (the sum of
# batch_sizes for a packed batch); each direction of each layer runs every step.

RECURRENT_CASES = [
    pytest.param(nn.RNNCell(4, 5), [(3, 4)], recurrent(5 * (4 + 5), 5 + 2 * 5, steps=3), id="rnn-cell"),
    pytest.param(
        nn.RNNCell(4, 5, bias=False, nonlinearity="relu"), [(4,)],
        recurrent(5 * (4 + 5), 5, steps=1), id="rnn-cell-relu-no-bias-unbatched",
    ),
    pytest.param(
        nn.GRUCell(4, 5), [(3, 4)], recurrent(3 * 5 * (4 + 5), 3 * 5 + 6 * 5 + 5 + 3 * 5, steps=3), id="gru-cell",
    ),
    pytest.param(
        nn.GRUCell(4, 5, bias=False), [(4,)],
        recurrent(3 * 5 * (4 + 5), 3 * 5 + 5 + 3 * 5, steps=1), id="gru-cell-no-bias-unbatched",
    ),
    pytest.param(
        nn.LSTMCell(4, 5), [(3, 4)], recurrent(4 * 5 * (4 + 5), 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=3), id="lstm-cell",
    ),
    pytest.param(
        nn.LSTMCell(4, 5), [(4,)],
        recurrent(4 * 5 * (4 + 5), 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=1), id="lstm-cell-unbatched",
    ),
    pytest.param(nn.RNN(4, 5), [(6, 2, 4)], recurrent(5 * (4 + 5), 5 + 2 * 5, steps=6 * 2), id="rnn-tanh"),
    pytest.param(
        nn.RNN(4, 5, num_layers=2, nonlinearity="relu"), [(6, 2, 4)],
        recurrent(5 * (4 + 5) + 5 * (5 + 5), 2 * (5 + 2 * 5), steps=6 * 2), id="rnn-relu-2-layers",
    ),
    pytest.param(
        nn.RNN(4, 5, bidirectional=True, batch_first=True), [(2, 6, 4)],
        recurrent(2 * 5 * (4 + 5), 2 * (5 + 2 * 5), steps=2 * 6), id="rnn-bidirectional-batch-first",
    ),
    pytest.param(nn.RNN(4, 5), [(6, 4)], recurrent(5 * (4 + 5), 5 + 2 * 5, steps=6), id="rnn-unbatched"),
    pytest.param(
        nn.GRU(4, 5), [(6, 2, 4)], recurrent(3 * 5 * (4 + 5), 3 * 5 + 6 * 5 + 5 + 3 * 5, steps=6 * 2), id="gru",
    ),
    # the second layer reads both directions: i = 2h
    pytest.param(
        nn.GRU(4, 5, num_layers=2, bidirectional=True, bias=False), [(6, 2, 4)],
        recurrent(2 * 3 * 5 * (4 + 5) + 2 * 3 * 5 * (2 * 5 + 5), 2 * 2 * (3 * 5 + 5 + 3 * 5), steps=6 * 2),
        id="gru-2-layers-bidirectional-no-bias",
    ),
    # thop counts max(batch_sizes) x len(batch_sizes) = 3 x 5; the steps that run are 5 + 3 + 2
    pytest.param(
        nn.GRU(4, 5), packed([5, 3, 2], 4),
        recurrent(3 * 5 * (4 + 5), 3 * 5 + 6 * 5 + 5 + 3 * 5, steps=5 + 3 + 2), id="gru-packed",
    ),
    pytest.param(
        nn.GRU(4, 5, batch_first=True), [(6, 4)],
        recurrent(3 * 5 * (4 + 5), 3 * 5 + 6 * 5 + 5 + 3 * 5, steps=6), id="gru-unbatched",
    ),
    pytest.param(
        nn.LSTM(4, 5), [(6, 2, 4)], recurrent(4 * 5 * (4 + 5), 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=6 * 2), id="lstm",
    ),
    pytest.param(
        nn.LSTM(4, 5, num_layers=2, batch_first=True), [(2, 6, 4)],
        recurrent(4 * 5 * (4 + 5) + 4 * 5 * (5 + 5), 2 * (4 * 5 + 8 * 5 + 3 * 5 + 5), steps=2 * 6),
        id="lstm-2-layers-batch-first",
    ),
    pytest.param(
        nn.LSTM(4, 5, bidirectional=True, bias=False), [(6, 2, 4)],
        recurrent(2 * 4 * 5 * (4 + 5), 2 * (4 * 5 + 3 * 5 + 5), steps=6 * 2), id="lstm-bidirectional-no-bias",
    ),
    pytest.param(
        nn.LSTM(4, 5, proj_size=3), [(6, 2, 4)],
        recurrent(4 * 5 * (4 + 3) + 3 * 5, 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=6 * 2), id="lstm-proj",
    ),
    # the second layer reads both projected directions: i = 2p
    pytest.param(
        nn.LSTM(4, 5, proj_size=3, num_layers=2, bidirectional=True), [(6, 2, 4)],
        recurrent(
            2 * (4 * 5 * (4 + 3) + 3 * 5) + 2 * (4 * 5 * (2 * 3 + 3) + 3 * 5),
            2 * 2 * (4 * 5 + 8 * 5 + 3 * 5 + 5),
            steps=6 * 2,
        ),
        id="lstm-proj-2-layers-bidirectional",
    ),
    pytest.param(
        nn.LSTM(4, 5), packed([4, 2, 1], 4),
        recurrent(4 * 5 * (4 + 5), 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=4 + 2 + 1), id="lstm-packed",
    ),
    pytest.param(
        nn.LSTM(4, 5), [(6, 4)], recurrent(4 * 5 * (4 + 5), 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=6), id="lstm-unbatched",
    ),
    pytest.param(
        nn.LSTM(4, 5), lambda: (torch.randn(6, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
        recurrent(4 * 5 * (4 + 5), 4 * 5 + 8 * 5 + 3 * 5 + 5, steps=6 * 2), id="lstm-initial-state",
    ),
]

# --- MultiheadAttention: q, k, v and output projections; scores q @ k^T and attn @ v, head_dim
# each, per (batch, head, query, key); softmax over each row of keys (3S - 1 FLOPs) and one
# multiply per score for the scaling.
# bias_k and add_zero_attn each append one key after the projections.

ATTENTION_CASES = [
    pytest.param(
        nn.MultiheadAttention(8, 2), [(5, 2, 8), (5, 2, 8), (5, 2, 8)],
        attention(
            projections=2 * 5 * 8 * 8 + 2 * 5 * 8 * 8 + 2 * 5 * 8 * 8 + 2 * 5 * 8 * 8,
            scores=2 * 2 * 5 * 5 * (4 + 4),
            softmax=2 * 2 * 5 * (3 * 5 - 1),
            scaling=2 * 2 * 5 * 5,
        ),
        id="mha",
    ),
    pytest.param(
        nn.MultiheadAttention(8, 2, kdim=3, vdim=5, batch_first=True, add_bias_kv=True, add_zero_attn=True),
        [(2, 5, 8), (2, 7, 3), (2, 7, 5)],
        attention(
            projections=2 * 5 * 8 * 8 + 2 * 7 * 3 * 8 + 2 * 7 * 5 * 8 + 2 * 5 * 8 * 8,
            scores=2 * 2 * 5 * (7 + 1 + 1) * (4 + 4),
            softmax=2 * 2 * 5 * (3 * (7 + 1 + 1) - 1),
            scaling=2 * 2 * 5 * (7 + 1 + 1),
        ),
        id="mha-kdim-vdim-bias-kv-zero-attn-batch-first",
    ),
    pytest.param(
        nn.MultiheadAttention(8, 2), [(5, 8), (7, 8), (7, 8)],
        attention(
            projections=5 * 8 * 8 + 7 * 8 * 8 + 7 * 8 * 8 + 5 * 8 * 8,
            scores=2 * 5 * 7 * (4 + 4),
            softmax=2 * 5 * (3 * 7 - 1),
            scaling=2 * 5 * 7,
        ),
        id="mha-unbatched-cross",
    ),
]

# --- EmbeddingBag: one add per gathered element (indices x dim) for "sum" and "mean", a product
# more with per_sample_weights, one division per output element for "mean"; "max" only compares.

EMBEDDING_BAG_CASES = [
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="sum"), indices([1, 2, 3], [4, 5, 6]),
        elementwise(flops=2 * 3 * 4), id="embedding-bag-sum",
    ),
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="sum"), indices([1, 2, 3, 4, 5], offsets=[0, 2], weights=True),
        elementwise(flops=5 * 4 * (1 + 1)), id="embedding-bag-sum-weighted-offsets",
    ),
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="sum"), indices([1, 2, 3], [4, 5, 6], weights=True),
        elementwise(flops=2 * 3 * 4 * (1 + 1)), id="embedding-bag-sum-weighted-2d",
    ),
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="mean"), indices([1, 2, 3], [4, 5, 6]),
        elementwise(flops=2 * 3 * 4 + 2 * 4), id="embedding-bag-mean",
    ),
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="mean"), indices([1, 2, 3, 4, 5], offsets=[0, 2]),
        elementwise(flops=5 * 4 + 2 * 4), id="embedding-bag-mean-offsets",
    ),
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="max"), indices([1, 2, 3], [4, 5, 6]), Expected(0, 0), id="embedding-bag-max",
    ),
    pytest.param(
        nn.EmbeddingBag(10, 4, mode="max"), indices([1, 2, 3, 4, 5], offsets=[0, 2]), Expected(0, 0),
        id="embedding-bag-max-offsets",
    ),
]

COUNTED_CASES = (
    CONV_CASES + CONV_TRANSPOSE_CASES + LINEAR_CASES + NORM_CASES + ACTIVATION_CASES + POOLING_CASES
    + UPSAMPLE_CASES + RECURRENT_CASES + ATTENTION_CASES + EMBEDDING_BAG_CASES
)

# --- declared free: 0 MACs and 0 FLOPs by decision, status "free"

FREE_CASES = [
    pytest.param(nn.ReLU(), [(2, 3, 4)], FREE, id="relu"),
    pytest.param(nn.ReLU6(), [(2, 3, 4)], FREE, id="relu6"),
    pytest.param(nn.Hardtanh(), [(2, 3, 4)], FREE, id="hardtanh"),
    pytest.param(nn.Threshold(0.1, 20.0), [(2, 3, 4)], FREE, id="threshold"),
    pytest.param(nn.Hardshrink(), [(2, 3, 4)], FREE, id="hardshrink"),
    pytest.param(nn.MaxPool1d(2), [(2, 3, 8)], FREE, id="maxpool1d"),
    pytest.param(nn.MaxPool2d(2), [(1, 3, 4, 4)], FREE, id="maxpool2d"),
    pytest.param(nn.MaxPool3d(2, return_indices=True), [(1, 2, 4, 4, 4)], FREE, id="maxpool3d-indices"),
    pytest.param(nn.AdaptiveMaxPool1d(3), [(2, 3, 7)], FREE, id="adaptive-maxpool1d"),
    pytest.param(nn.AdaptiveMaxPool2d((2, 3)), [(1, 3, 5, 7)], FREE, id="adaptive-maxpool2d"),
    pytest.param(nn.AdaptiveMaxPool3d(2), [(1, 2, 4, 4, 4)], FREE, id="adaptive-maxpool3d"),
    pytest.param(nn.MaxUnpool1d(2), pooled(nn.MaxPool1d(2, return_indices=True), (1, 2, 6)), FREE, id="maxunpool1d"),
    pytest.param(nn.MaxUnpool2d(2), pooled(nn.MaxPool2d(2, return_indices=True), (1, 2, 4, 4)), FREE, id="maxunpool2d"),
    pytest.param(
        nn.MaxUnpool3d(2), pooled(nn.MaxPool3d(2, return_indices=True), (1, 2, 4, 4, 4)), FREE, id="maxunpool3d",
    ),
    pytest.param(nn.FractionalMaxPool2d(2, output_size=3), [(1, 2, 7, 7)], FREE, id="fractional-maxpool2d"),
    pytest.param(nn.FractionalMaxPool3d(2, output_ratio=0.5), [(1, 2, 8, 8, 8)], FREE, id="fractional-maxpool3d"),
    pytest.param(nn.Identity(), [(2, 3)], FREE, id="identity"),
    pytest.param(nn.Flatten(), [(2, 3, 4)], FREE, id="flatten"),
    pytest.param(nn.Unflatten(1, (2, 3)), [(4, 6)], FREE, id="unflatten"),
    pytest.param(nn.Dropout(), [(2, 3)], FREE, id="dropout"),
    pytest.param(nn.Dropout1d(), [(2, 3, 4)], FREE, id="dropout1d"),
    pytest.param(nn.Dropout2d(), [(2, 3, 4, 4)], FREE, id="dropout2d"),
    pytest.param(nn.Dropout3d(), [(2, 3, 2, 2, 2)], FREE, id="dropout3d"),
    pytest.param(nn.AlphaDropout(), [(2, 3)], FREE, id="alpha-dropout"),
    pytest.param(nn.FeatureAlphaDropout(), [(2, 3, 4)], FREE, id="feature-alpha-dropout"),
    pytest.param(nn.ZeroPad1d(1), [(1, 2, 4)], FREE, id="zeropad1d"),
    pytest.param(nn.ZeroPad2d((1, 2, 0, 1)), [(1, 2, 4, 4)], FREE, id="zeropad2d"),
    pytest.param(nn.ZeroPad3d(1), [(1, 1, 2, 2, 2)], FREE, id="zeropad3d"),
    pytest.param(nn.ConstantPad1d(2, 0.5), [(1, 2, 4)], FREE, id="constantpad1d"),
    pytest.param(nn.ConstantPad2d(1, 0.5), [(1, 2, 4, 4)], FREE, id="constantpad2d"),
    pytest.param(nn.ConstantPad3d(1, 0.5), [(1, 1, 2, 2, 2)], FREE, id="constantpad3d"),
    pytest.param(nn.ReflectionPad1d(2), [(1, 2, 4)], FREE, id="reflectionpad1d"),
    pytest.param(nn.ReflectionPad2d(1), [(1, 2, 3, 3)], FREE, id="reflectionpad2d"),
    pytest.param(nn.ReflectionPad3d(1), [(1, 1, 2, 2, 2)], FREE, id="reflectionpad3d"),
    pytest.param(nn.ReplicationPad1d(2), [(1, 2, 4)], FREE, id="replicationpad1d"),
    pytest.param(nn.ReplicationPad2d(1), [(1, 2, 3, 3)], FREE, id="replicationpad2d"),
    pytest.param(nn.ReplicationPad3d(1), [(1, 1, 2, 2, 2)], FREE, id="replicationpad3d"),
    pytest.param(nn.CircularPad1d(2), [(1, 2, 4)], FREE, id="circularpad1d"),
    pytest.param(nn.CircularPad2d(1), [(1, 2, 3, 3)], FREE, id="circularpad2d"),
    pytest.param(nn.CircularPad3d(1), [(1, 1, 2, 2, 2)], FREE, id="circularpad3d"),
    pytest.param(nn.PixelShuffle(2), [(1, 8, 3, 3)], FREE, id="pixel-shuffle"),
    pytest.param(nn.PixelUnshuffle(2), [(1, 2, 4, 4)], FREE, id="pixel-unshuffle"),
    pytest.param(nn.ChannelShuffle(2), [(1, 4, 2, 2)], FREE, id="channel-shuffle"),
    pytest.param(nn.Embedding(10, 3), indices([1, 2, 3], [4, 5, 6]), FREE, id="embedding"),
]

ALL_CASES = COUNTED_CASES + FREE_CASES


def cases(ids: set[str]) -> list:
    """The cases of ``ALL_CASES`` with these ids (all of them must exist)."""
    picked = [case for case in ALL_CASES if case.id in ids]
    missing = ids - {case.id for case in picked}
    assert not missing, f"no case with id {sorted(missing)}"
    return picked


@pytest.mark.parametrize(("layer", "inputs", "expected"), COUNTED_CASES)
def test_counted_closed_form(layer: nn.Module, inputs: Inputs, expected: Expected) -> None:
    result = profile(layer, inputs=build_inputs(inputs))
    assert Expected(result.total_macs, result.total_flops, result.matmul_flops) == expected
    assert result.layer("").status == "counted"


@pytest.mark.parametrize(("layer", "inputs", "expected"), FREE_CASES)
def test_free_closed_form(layer: nn.Module, inputs: Inputs, expected: Expected) -> None:
    result = profile(layer, inputs=build_inputs(inputs))
    assert Expected(result.total_macs, result.total_flops, result.matmul_flops) == expected
    assert result.layer("").status == "free"


SUBCLASS_IDS = {
    "conv1d-groups-no-bias", "conv2d-depthwise", "conv3d-stride-padding", "conv-transpose2d-issue-example",
    "linear-3d", "bilinear-2d", "batchnorm2d", "syncbatchnorm", "layernorm", "instancenorm2d-affine",
    "groupnorm", "rmsnorm", "prelu", "softmax-dim1", "softmax2d", "log-softmax-negative-dim", "gelu-tanh",
    "glu", "sigmoid", "avgpool2d-int", "adaptive-avgpool2d-7x6-to-3x4", "upsample-bilinear", "rnn-cell",
    "gru-packed", "lstm-proj", "mha", "embedding-bag-mean", "relu", "maxpool2d", "dropout", "embedding",
}


@pytest.mark.parametrize(("layer", "inputs", "expected"), cases(SUBCLASS_IDS))
def test_subclass_counts_as_its_base(layer: nn.Module, inputs: Inputs, expected: Expected) -> None:
    base = type(layer)
    sub = copy.deepcopy(layer)
    sub.__class__ = type(f"My{base.__name__}", (base,), {})
    result = profile(sub, inputs=build_inputs(inputs))
    assert Expected(result.total_macs, result.total_flops, result.matmul_flops) == expected
    assert result.layer("").type == f"My{base.__name__}"
    assert result.layer("").status == profile(layer, inputs=build_inputs(inputs)).layer("").status


def test_lazy_subclass_counts_as_its_base() -> None:
    # parameters are counted after the forward, once the lazy layer has materialised them
    result = profile(nn.LazyLinear(8), inputs=(torch.randn(4, 16),))
    assert Expected(result.total_macs, result.total_flops, result.matmul_flops) == matmul(4 * 8 * 16)
    assert result.total_params == 16 * 8 + 8
    assert result.root.type == "Linear"


def test_every_module_rule_has_a_case() -> None:
    tested = {type(case.values[0]) for case in ALL_CASES}
    missing = sorted(t.__qualname__ for t in REGISTRY.module_rules if t not in tested)
    assert not missing, f"module rules without a closed-form case in this file: {missing}"


# thop 0.1.1 is right for these: our MACs equal its number.
THOP_IDS = {
    "conv1d-basic", "conv1d-stride-padding-dilation", "conv2d-basic", "conv2d-groups-dilation-rect",
    "conv2d-depthwise", "conv3d-stride-padding", "linear-2d", "linear-3d", "linear-unbatched",
    "batchnorm1d-2d-input", "batchnorm2d", "batchnorm3d-no-affine-batch-stats", "syncbatchnorm", "layernorm",
    "layernorm-no-affine", "instancenorm2d-affine", "prelu", "softmax-dim1", "softmax-negative-dim",
    "leaky-relu", "adaptive-avgpool1d-divisible", "adaptive-avgpool2d-global", "upsample-nearest",
    "upsample-linear", "upsample-bilinear", "upsample-bicubic", "upsampling-nearest2d", "upsampling-bilinear2d",
    "rnn-cell", "gru-cell", "lstm-cell", "rnn-tanh", "rnn-relu-2-layers", "rnn-bidirectional-batch-first", "gru",
    "gru-2-layers-bidirectional-no-bias", "lstm", "lstm-2-layers-batch-first", "lstm-bidirectional-no-bias",
    "relu", "relu6", "maxpool2d", "adaptive-maxpool2d", "dropout", "zeropad2d", "pixel-shuffle",
}


@pytest.mark.parametrize(("layer", "inputs", "expected"), cases(THOP_IDS))
def test_macs_match_thop(layer: nn.Module, inputs: Inputs, expected: Expected) -> None:
    built = build_inputs(inputs)
    thop_macs, _ = thop.profile(copy.deepcopy(layer), inputs=built, verbose=False)
    assert thop_macs == expected.macs
    assert profile(layer, inputs=built).total_macs == expected.macs


# FlopCounterMode counts matmul-like work; our matmul FLOPs equal its total.
FLOP_COUNTER_IDS = {
    "conv1d-stride-padding-dilation", "conv1d-unbatched", "conv2d-groups-dilation-rect", "conv2d-same-reflect",
    "conv3d-groups-unbatched", "conv-transpose2d-issue-example", "conv-transpose1d-groups-no-bias",
    "conv-transpose2d-dilation-unbatched", "conv-transpose3d-output-padding", "linear-3d", "linear-unbatched",
    "mha", "mha-kdim-vdim-bias-kv-zero-attn-batch-first", "mha-unbatched-cross", "lstm-cell", "gru-cell",
}


@pytest.mark.parametrize(("layer", "inputs", "expected"), cases(FLOP_COUNTER_IDS))
def test_matmul_flops_match_flop_counter(layer: nn.Module, inputs: Inputs, expected: Expected) -> None:
    built = build_inputs(inputs)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        copy.deepcopy(layer).eval()(*built)
    assert counter.get_total_flops() == expected.matmul_flops


class BagFunction(nn.Module):
    """``F.embedding_bag`` on the bag module's own table: the function rule, not the module's."""

    def __init__(self, bag: nn.EmbeddingBag) -> None:
        super().__init__()
        self.bag = bag

    def forward(self, x, offsets=None, weights=None):
        return F.embedding_bag(x, self.bag.weight, offsets, mode=self.bag.mode, per_sample_weights=weights)


@pytest.mark.parametrize(("layer", "inputs", "expected"), EMBEDDING_BAG_CASES)
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")
def test_embedding_bag_as_a_function_and_scripted_counts_as_the_module(layer, inputs, expected) -> None:
    for model in (BagFunction(layer), torch.jit.script(layer)):
        result = profile(model, inputs=build_inputs(inputs))
        assert Expected(result.total_macs, result.total_flops, result.matmul_flops) == expected
        assert result.uncounted == ()
