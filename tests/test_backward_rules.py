"""The aten operators autograd runs in ``.backward()``: each rule's number is its formula, with the
operator called for real on small tensors; a fused attention's backward counts as the eager
attention's; and the backward of a handful of small models runs no operator without a rule."""

from __future__ import annotations

from math import prod

import pytest
import torch
import torch.nn.functional as F
import torchvision
import transformers
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from hooks import Counts
from hooks.aten import aten_rule, op_name
from hooks.registry import REGISTRY

RULES = REGISTRY.resolver({}).function_rules
aten = torch.ops.aten


def counts_of(op, out, args: tuple, kwargs: dict | None = None) -> Counts:
    """What ``op``'s aten rule counts for one call; free operators count zero."""
    rule = aten_rule(op, RULES)
    assert rule is not None, f"{op} has no rule"
    return Counts() if rule.free else rule.fn(args, kwargs or {}, out)


def run(op, *args, **kwargs) -> Counts:
    """Call ``op`` for real and count it."""
    return counts_of(op, op(*args, **kwargs), args, kwargs)


def rand(*shape: int, device: str = "cpu") -> torch.Tensor:
    return torch.randn(*shape, device=device)


# --------------------------------------------------------------------------- free operators

@pytest.mark.parametrize("op", [
    aten.select_backward.default, aten.slice_backward.default, aten.diagonal_backward.default,
    aten.as_strided_scatter.default, aten._unsafe_view.default, aten.new_empty_strided.default, aten.im2col.default,
    aten.max_pool2d_with_indices_backward.default, aten.max_pool3d_with_indices_backward.default,
    aten.adaptive_max_pool2d_backward.default, aten.adaptive_max_pool3d_backward.default,
    aten.fractional_max_pool2d_backward.default, aten.fractional_max_pool3d_backward.default,
    aten.threshold_backward.default, aten.hardtanh_backward.default, aten.hardshrink_backward.default,
    aten.softshrink_backward.default,
], ids=str)
def test_data_movement_and_selects_are_free(op):
    assert aten_rule(op, RULES).free


def test_free_operators_run_as_free():
    g, x = rand(2, 3, 4, 4), rand(2, 3, 8, 8)
    _, indices = aten.max_pool2d_with_indices.default(x, [2, 2], [2, 2])
    max_pool = (g, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
    assert run(aten.max_pool2d_with_indices_backward.default, *max_pool) == Counts()
    assert run(aten.select_backward.default, rand(3, 4), [2, 3, 4], 0, 1) == Counts()
    assert run(aten.threshold_backward.default, g, g, 0.0) == Counts()  # tagged pointwise, but a select


# --------------------------------------------------------------------------- activations and softmax

G = rand(2, 3, 4)
X = rand(2, 3, 4)
N = X.numel()


ACTIVATION_CASES = [
    pytest.param(aten.hardsigmoid_backward.default, (G, X), 1 * N, id="hardsigmoid"),
    pytest.param(aten.hardswish_backward.default, (G, X), 3 * N, id="hardswish"),
    pytest.param(aten.leaky_relu_backward.default, (G, X, 0.01, False), 1 * N, id="leaky_relu"),
    pytest.param(aten.rrelu_with_noise_backward.default, (G, X, torch.rand(2, 3, 4), 0.1, 0.3, True, False), 1 * N,
                 id="rrelu"),
    pytest.param(aten.log_sigmoid_backward.default, (G, X, torch.exp(-X.abs())), 4 * N, id="log_sigmoid"),
    pytest.param(aten.softplus_backward.default, (G, X, 1.0, 20.0), 5 * N, id="softplus"),
    pytest.param(aten.mish_backward.default, (G, X), 13 * N, id="mish"),
    pytest.param(aten._prelu_kernel_backward.default, (G, X, torch.rand(1, 3, 1)), 2 * N, id="prelu"),
    pytest.param(aten.glu_backward.default, (G, rand(2, 3, 8), 2), 7 * N, id="glu (per grad_output element)"),
    pytest.param(aten.elu_backward.default, (G, 1.0, 1.0, 1.0, False, X), 4 * N, id="elu from input"),
    pytest.param(aten.elu_backward.default, (G, 1.0, 1.0, 1.0, True, F.elu(X)), 3 * N, id="elu from result"),
    pytest.param(aten._softmax_backward_data.default, (G, X.softmax(-1), -1, torch.float32), 4 * N, id="softmax"),
    pytest.param(aten._log_softmax_backward_data.default, (G, X.log_softmax(-1), -1, torch.float32), 4 * N,
                 id="log_softmax"),
    pytest.param(aten._masked_softmax_backward.default, (G, X.softmax(-1), torch.zeros(2, 3, 4, dtype=torch.bool), -1),
                 4 * N, id="masked softmax"),
]


@pytest.mark.parametrize(("op", "args", "flops"), ACTIVATION_CASES)
def test_activation_backward(op, args, flops):
    assert run(op, *args) == Counts(0, flops, 0)


# --------------------------------------------------------------------------- normalisation

XN = rand(2, 4, 3, 3)  # [N, C, H, W]
GN = rand(2, 4, 3, 3)
NN = XN.numel()
C4 = torch.rand(4)


def layer_norm_case(mask, weight=True):
    # normalised over the last two dimensions
    w, b = (torch.rand(3, 3), torch.rand(3, 3)) if weight else (None, None)
    _, mean, rstd = aten.native_layer_norm.default(XN, [3, 3], w, b, 1e-5)
    return (GN, XN, [3, 3], mean, rstd, w, b, mask)


def group_norm_case(mask, weight=True):
    _, mean, rstd = aten.native_group_norm.default(XN, C4, C4, 2, 4, 9, 2, 1e-5)
    return (GN, XN, mean, rstd, C4 if weight else None, 2, 4, 9, 2, mask)


def batch_norm_case(mask, train, weight=True):
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    _, save_mean, save_invstd = aten.native_batch_norm.default(XN, C4, C4, running_mean, running_var, train, 0.1, 1e-5)
    return (GN, XN, C4 if weight else None, running_mean, running_var, save_mean, save_invstd, train, 1e-5, mask)


NORM_CASES = [
    # grad_input 10 per element with weight (9 without), grad_weight 2, grad_bias 1
    pytest.param(aten.native_layer_norm_backward.default, layer_norm_case([True, True, True]), 10 * NN + 2 * NN + NN,
                 id="layer_norm all"),
    pytest.param(aten.native_layer_norm_backward.default, layer_norm_case([True, False, False], weight=False), 9 * NN,
                 id="layer_norm no weight"),
    pytest.param(aten.native_layer_norm_backward.default, layer_norm_case([True, False, False]), 10 * NN,
                 id="layer_norm input only"),
    # without grad_input, grad_weight computes x_hat = (x - mean) * rstd itself: 2 more per element
    pytest.param(aten.native_layer_norm_backward.default, layer_norm_case([False, True, True]), (2 + 2) * NN + NN,
                 id="layer_norm weight and bias only"),
    pytest.param(aten.native_group_norm_backward.default, group_norm_case([True, True, True]), 10 * NN + 2 * NN + NN,
                 id="group_norm all"),
    pytest.param(aten.native_group_norm_backward.default, group_norm_case([True, False, False], weight=False), 9 * NN,
                 id="group_norm no weight"),
    pytest.param(aten.native_batch_norm_backward.default, batch_norm_case([True, True, True], train=True),
                 10 * NN + 2 * NN + NN, id="batch_norm train"),
    # running statistics: grad_input = g * gamma * rstd 2, grad_weight = sum(g * x_hat) with x_hat 4
    pytest.param(aten.native_batch_norm_backward.default, batch_norm_case([True, True, True], train=False),
                 2 * NN + (2 + 2) * NN + NN, id="batch_norm eval"),
    pytest.param(aten.native_batch_norm_backward.default,
                 batch_norm_case([True, False, False], train=False, weight=False), 1 * NN,
                 id="batch_norm eval no weight"),
    pytest.param(aten.batch_norm_backward.default, batch_norm_case([True, True, True], train=True) + (torch.empty(0),),
                 10 * NN + 2 * NN + NN, id="batch_norm_backward update"),
]


@pytest.mark.parametrize(("op", "args", "flops"), NORM_CASES)
def test_norm_backward(op, args, flops):
    assert run(op, *args) == Counts(0, flops, 0)


def test_gpu_norm_backward_on_meta():
    # CUDA-only kernels, run on the meta device: shapes are all a rule reads
    x, c = rand(2, 4, 3, 3, device="meta"), rand(4, device="meta")
    n = x.numel()
    cudnn = run(aten.cudnn_batch_norm_backward.default, x, x, c, c, c, c, c, 1e-5, torch.empty(0, device="meta"))
    assert cudnn == Counts(0, 10 * n + 2 * n + n, 0)
    miopen = run(aten.miopen_batch_norm_backward.default, x, x, c, c, c, c, c, 1e-5)
    assert miopen == Counts(0, 10 * n + 2 * n + n, 0)
    # RMSNorm: grad_input 7 per element with weight (6 without), grad_weight 2 (3 computing x * rstd itself)
    weight = rand(3, device="meta")
    _, rstd = aten._fused_rms_norm.default(x, [3], weight, 1e-5)
    both = run(aten._fused_rms_norm_backward.default, x, x, [3], rstd, weight, [True, True])
    assert both == Counts(0, 7 * n + 2 * n, 0)
    assert run(aten._fused_rms_norm_backward.default, x, x, [3], rstd, None, [True, False]) == Counts(0, 6 * n, 0)
    assert run(aten._fused_rms_norm_backward.default, x, x, [3], rstd, weight, [False, True]) == Counts(0, 3 * n, 0)


# --------------------------------------------------------------------------- pooling, interpolation, accumulation

P = rand(1, 2, 5, 5)
# 5 -> 3 with kernel 3, stride 2, padding 1 reads windows [0, 2), [1, 4), [3, 5): 2 + 3 + 2 inputs;
# adaptive pooling 5 -> 3 reads [0, 2), [1, 4), [3, 5) too. One add per (output, input) pair of a
# window and one division per output.
WINDOWS_5_TO_3 = 2 * (2 + 3 + 2) ** 2 + 2 * 3 * 3


POOLING_CASES = [
    pytest.param(aten.avg_pool2d_backward.default, (rand(1, 2, 3, 3), P, [3, 3], [2, 2], [1, 1], False, True, None),
                 WINDOWS_5_TO_3, id="avg_pool2d overlapping"),
    pytest.param(aten.avg_pool2d_backward.default,
                 (rand(2, 3, 2, 2), rand(2, 3, 4, 4), [2, 2], [], [0, 0], False, True, None),
                 2 * 3 * 4 * 4 + 2 * 3 * 2 * 2, id="avg_pool2d stride = kernel"),
    pytest.param(aten.avg_pool3d_backward.default, (rand(1, 1, 2, 2, 2), rand(1, 1, 4, 4, 4), [2, 2, 2], [2, 2, 2],
                                                    [0, 0, 0], False, True, None),
                 4 * 4 * 4 + 2 * 2 * 2, id="avg_pool3d"),
    pytest.param(aten._adaptive_avg_pool2d_backward.default, (rand(1, 2, 3, 3), P), WINDOWS_5_TO_3,
                 id="adaptive 5 -> 3"),
    pytest.param(aten._adaptive_avg_pool2d_backward.default, (rand(2, 3, 1, 1), rand(2, 3, 4, 4)),
                 2 * 3 * 4 * 4 + 2 * 3, id="global average pool"),
    pytest.param(aten._adaptive_avg_pool3d_backward.default, (rand(1, 1, 1, 1, 1), rand(1, 1, 4, 4, 4)), 4 * 4 * 4 + 1,
                 id="adaptive 3d"),
    # interpolation: per output gradient, an add per tap and the tap weight's products
    *(pytest.param(op, (rand(1, 2, *[4] * d), [4] * d, [1, 2, *[2] * d]), 1 * 2 * 4 ** d, id=f"{op}")
      for d, op in ((1, aten.upsample_nearest1d_backward.default), (2, aten.upsample_nearest2d_backward.default),
                    (3, aten.upsample_nearest3d_backward.default), (1, aten._upsample_nearest_exact1d_backward.default),
                    (2, aten._upsample_nearest_exact2d_backward.default),
                    (3, aten._upsample_nearest_exact3d_backward.default))),
    pytest.param(aten.upsample_linear1d_backward.default, (rand(1, 2, 6), [6], [1, 2, 3], False), 2 * 2 * (2 * 6),
                 id="linear"),
    pytest.param(aten.upsample_bilinear2d_backward.default, (rand(1, 2, 6, 6), [6, 6], [1, 2, 3, 3], False),
                 4 * 3 * (2 * 6 * 6), id="bilinear"),
    pytest.param(aten.upsample_trilinear3d_backward.default, (rand(1, 1, 4, 4, 4), [4, 4, 4], [1, 1, 2, 2, 2], False),
                 8 * 4 * (4 * 4 * 4), id="trilinear"),
    pytest.param(aten.upsample_bicubic2d_backward.default, (rand(1, 2, 6, 6), [6, 6], [1, 2, 3, 3], False),
                 16 * 3 * (2 * 6 * 6), id="bicubic"),
    # accumulating: one add per gradient value
    *(pytest.param(op, (rand(1, 2, *[6] * d), rand(1, 2, *[4] * d), [1, 1] * d), 2 * 6 ** d, id=f"{op}")
      for d, op in ((1, aten.reflection_pad1d_backward.default), (2, aten.reflection_pad2d_backward.default),
                    (3, aten.reflection_pad3d_backward.default), (1, aten.replication_pad1d_backward.default),
                    (2, aten.replication_pad2d_backward.default), (3, aten.replication_pad3d_backward.default))),
    pytest.param(aten.unfold_backward.default, (rand(3, 3, 3), [3, 8], 1, 3, 2), 3 * 3 * 3, id="Tensor.unfold"),
    pytest.param(aten.col2im.default, (rand(1, 2 * 2 * 2, 9), [4, 4], [2, 2], [1, 1], [0, 0], [1, 1]), 2 * 2 * 2 * 9,
                 id="col2im (F.fold)"),
    pytest.param(aten.index_select_backward.default, (rand(3, 4), [5, 4], 0, torch.tensor([0, 0, 2])), 3 * 4,
                 id="index_select"),
    pytest.param(aten.put.default, (rand(3, 4), torch.tensor([0, 0, 5]), rand(3), True), 3, id="put accumulate"),
    pytest.param(aten.put.default, (rand(3, 4), torch.tensor([0, 1, 5]), rand(3), False), 0, id="put"),
]


@pytest.mark.parametrize(("op", "args", "flops"), POOLING_CASES)
def test_pooling_and_accumulation_backward(op, args, flops):
    assert run(op, *args) == Counts(0, flops, 0)


# --------------------------------------------------------------------------- embeddings

IDX = torch.tensor([[1, 2, 2, 0], [3, 3, 9, 4]])  # [2, 4] into 10 rows of D = 8
D = 8


@pytest.mark.parametrize(("scale_grad_by_freq", "flops"), [(False, 2 * 4 * D), (True, 2 * (2 * 4 * D))])
def test_embedding_dense_backward(scale_grad_by_freq, flops):
    counts = run(aten.embedding_dense_backward.default, rand(2, 4, D), IDX, 10, -1, scale_grad_by_freq)
    assert counts == Counts(0, flops, 0)


BAG_INDICES, OFFSETS = torch.tensor([1, 2, 2, 0, 3, 3, 9]), torch.tensor([0, 3])  # two bags over 7 indices


@pytest.mark.parametrize(("mode", "weighted", "flops"), [
    pytest.param(0, False, 7 * D, id="sum: an add per element"),
    pytest.param(1, False, 2 * 7 * D, id="mean: and a product"),
    pytest.param(0, True, 2 * 7 * D, id="per-sample weights: and a product"),
    pytest.param(2, False, 0, id="max: a scatter"),
])
def test_embedding_bag_backward(mode, weighted, flops):
    weight = rand(10, D)
    per_sample = torch.rand(7) if weighted else None
    _, offset2bag, bag_size, max_indices = aten._embedding_bag.default(
        weight, BAG_INDICES, OFFSETS, False, mode, False, per_sample)
    grad = rand(2, D)
    args = (grad, BAG_INDICES, OFFSETS, offset2bag, bag_size, max_indices, 10, False, mode, False, per_sample)
    assert run(aten._embedding_bag_backward.default, *args) == Counts(0, flops, 0)
    bags = torch.tensor([0, 0, 0, 1, 1, 1, 1])  # the bag of each index (the forward may leave offset2bag empty)
    dense = (grad, BAG_INDICES, bags, bag_size, max_indices, 10, False, mode, per_sample)
    assert run(aten._embedding_bag_dense_backward.default, *dense) == Counts(0, flops, 0)
    if weighted:  # the per-sample weights' gradient: a dot product of D per index
        per_sample_grad = run(aten._embedding_bag_per_sample_weights_backward.default,
                              grad, weight, BAG_INDICES, OFFSETS, bags, mode)
        assert per_sample_grad == Counts(0, 7 * 2 * D, 0)


# --------------------------------------------------------------------------- losses

LOGITS, TARGET = rand(4, 5), torch.rand(4, 5)
PROBS = torch.rand(4, 5) * 0.8 + 0.1
SCALAR = torch.tensor(1.0)


def nll_case(logp, target):
    _, total_weight = aten.nll_loss_forward.default(logp, target, None, 1, -100)
    return (SCALAR, logp, target, None, 1, -100, total_weight)


LOSS_CASES = [
    pytest.param(aten.nll_loss_backward.default, nll_case(LOGITS.log_softmax(1), torch.tensor([0, 1, 4, 2])), 4,
                 id="nll_loss: one per target"),
    pytest.param(aten.nll_loss2d_backward.default, (SCALAR, rand(2, 3, 4, 4).log_softmax(1),
                                                    torch.randint(0, 3, (2, 4, 4)), None, 1, -100, torch.tensor(32.0)),
                 2 * 4 * 4, id="nll_loss2d"),
    pytest.param(aten.mse_loss_backward.default, (SCALAR, LOGITS, TARGET, 1), 2 * 4 * 5, id="mse"),
    pytest.param(aten.smooth_l1_loss_backward.default, (SCALAR, LOGITS, TARGET, 1, 1.0), 2 * 4 * 5, id="smooth_l1"),
    pytest.param(aten.huber_loss_backward.default, (SCALAR, LOGITS, TARGET, 1, 1.0), 2 * 4 * 5, id="huber"),
    pytest.param(aten.soft_margin_loss_backward.default, (SCALAR, LOGITS, TARGET.sign(), 1), 6 * 4 * 5,
                 id="soft_margin"),
    pytest.param(aten.binary_cross_entropy_backward.default, (SCALAR, PROBS, TARGET, None, 1), 5 * 4 * 5, id="bce"),
    pytest.param(aten.binary_cross_entropy_backward.default, (SCALAR, PROBS, TARGET, torch.rand(4, 5), 1), 6 * 4 * 5,
                 id="bce weighted"),
]


@pytest.mark.parametrize(("op", "args", "flops"), LOSS_CASES)
def test_loss_backward(op, args, flops):
    assert run(op, *args) == Counts(0, flops, 0)


def test_weight_norm_backward():
    v, g = rand(6, 4), torch.rand(6, 1)
    w, norms = aten._weight_norm_interface.default(v, g, 0)
    counts = run(aten._weight_norm_interface_backward.default, torch.ones_like(w), v, g, norms, 0)
    assert counts == Counts(0, 5 * v.numel(), 0)


# --------------------------------------------------------------------------- attention


def eager_attention(q, k, v):
    """Attention as the math kernel computes it; k and v repeated for grouped-query attention."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v


class Recorder(TorchDispatchMode):
    """Counts every aten operator by its rule, as the backward counter does."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.total = Counts()
        self.by_op: dict[str, Counts] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        counts = counts_of(func, out, args, kwargs)
        self.ops.append(op_name(func))
        self.total = self.total + counts
        self.by_op[op_name(func)] = self.by_op.get(op_name(func), Counts()) + counts
        return out


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (6, 1)], ids=["MHA", "GQA", "MQA"])
def test_flash_backward_matmuls_equal_flop_counter_on_eager_attention(heads, kv_heads):
    b, L, S, E = 2, 5, 7, 8
    torch.manual_seed(0)
    q, k, v = rand(b, heads, L, E), rand(b, kv_heads, S, E), rand(b, kv_heads, S, E)
    out, lse = aten._scaled_dot_product_flash_attention_for_cpu.default(q, k, v)
    g = torch.ones_like(out)
    fused = run(aten._scaled_dot_product_flash_attention_for_cpu_backward.default, g, q, k, v, out, lse, 0.0, False)

    # four matmuls (dp = g v^T, dv = p^T g, dq = ds k, dk = ds^T q) of L x S x E per query head,
    # and 5 FLOPs per score (the softmax's backward 4, the scale's 1)
    scores = b * heads * L * S
    assert fused == Counts.matmul(4 * scores * E) + Counts.elementwise(flops=5 * scores)

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    eager = eager_attention(*leaves)
    counter = FlopCounterMode(display=False)
    with counter:
        eager.backward(g)
    assert fused.matmul_flops == counter.get_total_flops()


def meta_attention(heads: int, kv_heads: int, L: int, S: int, E: int) -> tuple:
    q, k, v = (rand(2, h, n, E, device="meta") for h, n in ((heads, L), (kv_heads, S), (kv_heads, S)))
    return q, k, v, torch.empty_like(q), torch.empty(2, heads, L, device="meta")


ZERO_META = torch.empty((), dtype=torch.int64, device="meta")
GPU_ATTENTION_BACKWARDS = [
    pytest.param(aten._scaled_dot_product_flash_attention_backward.default,
                 lambda q, k, v, out, lse: (out, q, k, v, out, lse, ZERO_META, ZERO_META, q.shape[2], k.shape[2], 0.0,
                                            False, ZERO_META, ZERO_META), id="flash"),
    pytest.param(aten._scaled_dot_product_efficient_attention_backward.default,
                 lambda q, k, v, out, lse: (out, q, k, v, None, out, lse, ZERO_META, ZERO_META, 0.0,
                                            [True, True, True, False]), id="efficient"),
    pytest.param(aten._scaled_dot_product_cudnn_attention_backward.default,
                 lambda q, k, v, out, lse: (out, q, k, v, out, lse, ZERO_META, ZERO_META, None, None, None, q.shape[2],
                                            k.shape[2], 0.0, False), id="cudnn"),
    pytest.param(aten._scaled_dot_product_fused_attention_overrideable_backward.default,
                 lambda q, k, v, out, lse: (out, q, k, v, torch.empty(0, device="meta"), [True, True, True, False], out,
                                            lse, None, None, q.shape[2], k.shape[2], 0.0, False, ZERO_META, ZERO_META),
                 id="overrideable"),
]


@pytest.mark.parametrize(("op", "make_args"), GPU_ATTENTION_BACKWARDS)
def test_gpu_attention_backwards_count_as_the_cpu_kernel(op, make_args):
    # on the meta device, with grouped heads; FlopCounterMode's own formula would add the recomputed scores
    b, heads, L, S, E = 2, 4, 5, 7, 8
    scores = b * heads * L * S
    assert run(op, *make_args(*meta_attention(heads, 2, L, S, E))) == (
        Counts.matmul(4 * scores * E) + Counts.elementwise(flops=5 * scores))


def test_flash_backward_counts_as_the_eager_backward_op_by_op():
    # without grouped heads the eager backward's operators add up to the fused kernel's counts
    torch.manual_seed(0)
    q, k, v = (rand(2, 4, 6, 8).requires_grad_() for _ in range(3))
    g = rand(2, 4, 6, 8)
    fused_out = F.scaled_dot_product_attention(q, k, v)
    fused, eager = Recorder(), Recorder()
    with fused:
        fused_out.backward(g)
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in fused.ops  # the kernel SDPA picked
    eager_out = eager_attention(*(t.detach().requires_grad_() for t in (q, k, v)))  # fresh leaves: no .grad to add to
    with eager:
        eager_out.backward(g)
    assert fused.total == eager.total
    assert eager.by_op["aten._softmax_backward_data"].flops == 4 * 2 * 4 * 6 * 6


# --------------------------------------------------------------------------- small models' backwards


class Uncounted(TorchDispatchMode):
    """The names of the aten operators that run while pushed and have no rule."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if aten_rule(func, RULES) is None:
            self.names.add(op_name(func))
        return func(*args, **(kwargs or {}))


def image_loss(model: nn.Module, size: int) -> torch.Tensor:
    logits = model(torch.randn(2, 3, size, size))
    return F.cross_entropy(logits, torch.tensor([0, 1]))


def causal_lm_loss(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 8))
    return model(input_ids=ids, labels=ids).loss


def transformer_encoder_loss() -> torch.Tensor:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return model(torch.randn(2, 6, 32)).square().mean()


def llama(attn_implementation: str) -> nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, attn_implementation=attn_implementation))


def bert_loss() -> torch.Tensor:
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32))
    ids = torch.randint(0, 100, (2, 8))
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("loss", [
    pytest.param(lambda: image_loss(torchvision.models.resnet18(num_classes=10), 64), id="resnet18"),
    pytest.param(lambda: image_loss(torchvision.models.mobilenet_v3_small(num_classes=10), 64),
                 id="mobilenet_v3_small"),
    pytest.param(transformer_encoder_loss, id="nn.TransformerEncoder"),
    pytest.param(lambda: causal_lm_loss(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32))), id="gpt2"),
    pytest.param(lambda: causal_lm_loss(llama("eager")), id="llama eager"),
    pytest.param(lambda: causal_lm_loss(llama("sdpa")), id="llama sdpa"),
    pytest.param(bert_loss, id="bert"),
])
def test_every_backward_operator_has_a_rule(loss):
    torch.manual_seed(0)
    value = loss()
    uncounted = Uncounted()
    with uncounted:
        value.backward()
    assert sorted(uncounted.names) == []


# tested outside the case lists above
TESTED_ELSEWHERE = {
    aten.cudnn_batch_norm_backward, aten.miopen_batch_norm_backward, aten._fused_rms_norm_backward,
    aten.embedding_dense_backward, aten._embedding_bag_backward, aten._embedding_bag_dense_backward,
    aten._embedding_bag_per_sample_weights_backward, aten._weight_norm_interface_backward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward, aten.convolution_backward,
    aten.mkldnn_rnn_layer_backward,
}


def test_every_backward_rule_has_a_case():
    registered = {f for f, rule in RULES.items()
                  if rule.fn is not None and rule.fn.__module__ == "hooks.rules.backward"}
    cases = ACTIVATION_CASES + NORM_CASES + POOLING_CASES + LOSS_CASES + GPU_ATTENTION_BACKWARDS
    cased = {case.values[0].overloadpacket for case in cases} | TESTED_ELSEWHERE
    assert sorted(map(str, registered - cased)) == []


# --------------------------------------------------------------------------- convolution


@pytest.mark.parametrize(("conv", "shape"), [
    pytest.param(nn.Conv2d(4, 6, 3, padding=1), (2, 4, 5, 5), id="conv2d"),
    pytest.param(nn.Conv1d(4, 6, 3, stride=2, bias=False), (2, 4, 9), id="conv1d strided, no bias"),
    pytest.param(nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 5, 5), id="depthwise"),
    pytest.param(nn.Conv2d(8, 4, 3, groups=2), (2, 8, 5, 5), id="grouped"),
    pytest.param(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (2, 4, 3, 3), id="transposed grouped"),
])
def test_convolution_backward_costs_the_forward_twice(conv, shape):
    x = torch.randn(shape, requires_grad=True)
    y = conv(x)
    transposed = isinstance(conv, nn.ConvTranspose2d)
    # each output element (a transposed conv's input element) is a dot product of weight.shape[1:]
    forward_macs = (x.numel() if transposed else y.numel()) * prod(conv.weight.shape[1:])
    recorder = Recorder()
    with recorder:
        y.backward(torch.ones_like(y))
    bias = y.numel() if conv.bias is not None else 0  # grad_bias = sum(g)
    expected = Counts.matmul(2 * forward_macs) + Counts.elementwise(flops=bias)
    assert recorder.by_op["aten.convolution_backward"] == expected
    again = conv(x)
    counter = FlopCounterMode(display=False)
    with counter:
        again.backward(torch.ones_like(y))
    # FlopCounterMode counts grad_weight once per group over all input channels
    assert counter.get_total_flops() == 2 * (forward_macs + conv.groups * forward_macs)


def test_first_convolution_counts_no_input_gradient():
    conv = nn.Conv2d(3, 4, 3)
    y = conv(torch.randn(1, 3, 6, 6))  # the input needs no gradient: output_mask (False, True, True)
    recorder = Recorder()
    with recorder:
        y.backward(torch.ones_like(y))
    assert recorder.by_op["aten.convolution_backward"] == (
        Counts.matmul(y.numel() * 3 * 3 * 3) + Counts.elementwise(flops=y.numel()))


class LSTMWithState(nn.Module):
    """A Linear, then a 2-layer LSTM started from a given state: every gradient the kernel computes
    (input, weights, initial state) is one autograd needs too, so the native path computes them all."""

    def __init__(self, bidirectional: bool) -> None:
        super().__init__()
        self.proj, self.lstm = nn.Linear(8, 8), nn.LSTM(8, 16, num_layers=2, batch_first=True,
                                                        bidirectional=bidirectional)

    def forward(self, x, h, c):
        return self.lstm(self.proj(x), (h, c))[0]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_cpu_lstm_step_has_the_native_paths_matmul_flops(bidirectional):
    """The CPU LSTM's fused kernel (mkldnn_rnn_layer_backward), which FlopCounterMode counts 0 for,
    against FlopCounterMode on the same step with mkldnn off, where the LSTM runs as matmuls."""
    from profiler import profile_training

    torch.manual_seed(0)
    model, directions = LSTMWithState(bidirectional), 2 if bidirectional else 1
    x = torch.randn(3, 5, 8)
    h, c = (torch.randn(2 * directions, 3, 16, requires_grad=True) for _ in range(2))
    with torch.backends.mkldnn.flags(enabled=False):
        counter = FlopCounterMode(display=False)
        with counter:
            model(x, h, c).sum().backward()
    model.zero_grad(set_to_none=True)
    step = profile_training(model, inputs=(x, h, c))
    assert step.uncounted == ()
    assert step.matmul_flops + step.backward_matmul_flops == counter.get_total_flops()


def test_mkldnn_rnn_layer_backward_formula():
    """One direction of one layer: T·B steps of 4H gates over in + H inputs."""
    steps, hidden, inputs = 3 * 5, 16, 8
    x = torch.randn(5, 3, inputs)
    weights = [torch.randn(4 * hidden, inputs), torch.randn(4 * hidden, hidden), torch.randn(4 * hidden),
               torch.randn(4 * hidden)]
    state = torch.zeros(3, hidden)
    output, hy, cy, workspace = aten.mkldnn_rnn_layer(x, *weights, state, state, False, [], 2, hidden, 1, True,
                                                      False, False, True)
    grads = aten.mkldnn_rnn_layer_backward(x, *weights, state, state, output, hy, cy, torch.ones_like(output),
                                           None, None, False, 2, hidden, 1, True, True, False, [], False, workspace)
    counted = counts_of(aten.mkldnn_rnn_layer_backward.default, grads, (x, *weights, state, state, output, hy, cy,
                        torch.ones_like(output), None, None, False, 2, hidden, 1, True, True, False, [], False,
                        workspace))
    matmul_macs = 2 * steps * 4 * hidden * (inputs + hidden)
    assert counted == Counts(matmul_macs, 2 * matmul_macs + steps * hidden * 24 + steps * 4 * hidden, 2 * matmul_macs)
