"""Function rules read their arguments by signature: every counted torch function gives the same
counts called positionally and with its arguments passed by keyword.

The capture moves each keyword argument that has a position to it (``hooks.rules.common.positional``,
by torch's own signature) before a rule runs, so rules read positional parameters by index. The
sweep below calls every function that has a (non-free) rule both ways inside a tiny module; a
function registered without a sample in ``SAMPLES`` fails the sweep, so a new rule brings one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import Call as FunctionCall
from hooks import REGISTRY, capture_forward
from hooks.rules.common import positional, signature_of
from profiler import UncountedWarning, profile


@dataclass(frozen=True)
class Sample:
    """One call: positional ``args`` (a method's receiver first) and keyword-only ``kwonly``."""

    args: tuple
    kwonly: dict[str, Any] = field(default_factory=dict)


def s(*args: Any, **kwonly: Any) -> Sample:
    return Sample(args, kwonly)


def r(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values in (0.1, 0.9): inside the domain of log, sqrt, asin, logit... (counts read no values)."""
    return (torch.rand(shape) * 0.8 + 0.1).to(dtype)


def idx(*values: int) -> torch.Tensor:
    return torch.tensor(values)


# --------------------------------------------------------------------------- samples per function

SAMPLES: dict[Callable, Callable[[], Sample]] = {}


def sample(builder: Callable[[], Sample], *functions: Callable | None) -> None:
    """``builder`` makes a fresh sample (in-place variants change it) for each of ``functions``."""
    for f in functions:
        if f is None:  # absent in this torch
            continue
        if f in SAMPLES:
            raise ValueError(f"{f!r} has two samples")
        SAMPLES[f] = builder


def variants(*names: str, owners: tuple = (F, torch, torch.Tensor)) -> list[Callable]:
    """``<owner>.<name>`` and ``<owner>.<name>_`` for each owner that has them."""
    found = []
    for name in names:
        for owner in owners:
            for variant in (name, f"{name}_"):
                f = getattr(owner, variant, None)
                if callable(f) and f not in found:
                    found.append(f)
    return found


X = (2, 3, 5)  # rows of 5 along dim -1, 3 along dim 1: a misread dim changes softmax's count

# activations: one tensor; parameters where the function takes them
sample(lambda: s(r(*X)), *variants(
    "tanh", "hardsigmoid", "softsign", "tanhshrink", "sigmoid", "hardswish", "logsigmoid", "silu",
    "selu", "mish",
))
sample(lambda: s(r(2, 4, 5), 1), F.glu)  # halves dim 1
sample(lambda: s(r(*X), 0.2), *variants("leaky_relu", "softshrink", "elu", "celu"))
sample(lambda: s(r(*X), 0.1, 0.3), *variants("rrelu"))
sample(lambda: s(r(*X), 2.0, 10.0), F.softplus)
sample(lambda: s(r(*X), r(3)), F.prelu)
sample(lambda: s(r(*X), approximate="tanh"), F.gelu)  # keyword-only: 9 FLOPs per element, not 5
sample(lambda: s(r(*X), 1), *variants("softmax", "softmin", "log_softmax"))

# elementwise arithmetic: one or two tensors (the second broadcasts into the first)
UNARY = (
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal", "square",
    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "erf",
    "erfc", "erfinv", "frac",
)
BINARY = (
    "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "floor_divide",
    "remainder", "fmod", "pow", "atan2", "hypot", "xlogy", "rsub",
)
sample(lambda: s(r(*X)), *variants(*UNARY, owners=(torch, torch.Tensor)))
sample(lambda: s(r(*X), 1e-6), *variants("logit", owners=(torch, torch.Tensor)))
# float_power computes in double: its in-place form wants a double base
sample(lambda: s(r(*X, dtype=torch.float64), r(3, 1)), *variants("float_power", owners=(torch, torch.Tensor)))
sample(lambda: s(r(*X), r(3, 1)), *variants(*BINARY, owners=(torch, torch.Tensor)),
       torch.Tensor.__rsub__, torch.Tensor.__rtruediv__, torch.Tensor.__floordiv__, torch.Tensor.__rfloordiv__,
       torch.Tensor.__pow__, torch.Tensor.__rpow__, torch.Tensor.__ipow__, torch.Tensor.__mod__)
sample(lambda: s(r(*X), r(3, 1), r(5)), *variants("addcmul", "addcdiv", "lerp", owners=(torch, torch.Tensor)))

# reductions along dim 1
sample(lambda: s(r(*X), 1), *variants(
    "sum", "nansum", "prod", "cumsum", "cumprod", "logcumsumexp", "mean", "nanmean", "var", "std",
    "var_mean", "std_mean", "logsumexp", owners=(torch, torch.Tensor),
))
sample(lambda: s(r(*X), 2, 1), torch.norm, torch.Tensor.norm, torch.linalg.vector_norm)
sample(lambda: s(r(*X), None, 1), torch.linalg.norm)
sample(lambda: s(r(*X), 2.0, 1), F.normalize)
sample(lambda: s(r(5, 3), 0, idx(0, 2), r(2, 3)), *variants("index_add", owners=(torch, torch.Tensor)))
sample(lambda: s(r(5, 3), 0, idx(0, 2, 4, 1, 3, 0).view(2, 3), r(2, 3)),
       *variants("scatter_add", owners=(torch, torch.Tensor)))

# matrix products
sample(lambda: s(r(2, 3, 4), r(4, 5)), torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.linalg.matmul)
sample(lambda: s(r(4, 5), r(3, 4)), torch.Tensor.__rmatmul__)  # b.__rmatmul__(a) is a @ b
sample(lambda: s(r(3, 4), r(4, 5)), torch.mm, torch.Tensor.mm)
sample(lambda: s(r(2, 3, 4), r(2, 4, 5)), torch.bmm, torch.Tensor.bmm)
sample(lambda: s(r(3, 4), r(4)), torch.mv, torch.Tensor.mv)
sample(lambda: s(r(4), r(4)), torch.dot, torch.Tensor.dot, torch.vdot, torch.Tensor.vdot)
sample(lambda: s(r(3, 4), r(5, 4)), torch.inner, torch.Tensor.inner)
sample(lambda: s(r(3, 5), r(3, 4), r(4, 5)), torch.addmm, torch.Tensor.addmm, torch.Tensor.addmm_)
sample(lambda: s(r(2, 3, 5), r(2, 3, 4), r(2, 4, 5)), torch.baddbmm, torch.Tensor.baddbmm, torch.Tensor.baddbmm_)
sample(lambda: s(r(3), r(3, 4), r(4)), torch.addmv, torch.Tensor.addmv, torch.Tensor.addmv_, torch.addmv_)
sample(lambda: s(r(3, 5), r(2, 3, 4), r(2, 4, 5)), torch.addbmm, torch.Tensor.addbmm, torch.Tensor.addbmm_)
sample(lambda: s("bij,bjk->bik", r(2, 3, 4), r(2, 4, 5)), torch.einsum)
sample(lambda: s(r(2, 3, 4), r(3, 4, 5), 2), torch.tensordot)
sample(lambda: s([r(2, 3), r(3, 4), r(4, 5)]), torch.linalg.multi_dot)
sample(lambda: s(r(3), r(4)), torch.outer, torch.Tensor.outer, torch.ger, torch.Tensor.ger)
sample(lambda: s(r(2, 3), r(4, 5)), torch.kron, torch.Tensor.kron)
sample(lambda: s(r(3, 4), r(3), r(4)), torch.addr, torch.Tensor.addr, torch.Tensor.addr_)
sample(lambda: s(r(2, 3, 4), r(2, 5, 4)), torch.cdist)
sample(lambda: s(r(2, 8, 16, dtype=torch.bfloat16), r(2, 16, 8, dtype=torch.bfloat16)),  # strides of 16 bytes
       getattr(torch, "_grouped_mm", None), getattr(F, "grouped_mm", None))


def _fp8(*shape: int) -> torch.Tensor:
    return r(*shape).to(torch.float8_e4m3fn)


# FP8 products; mat2 column-major. _scaled_mm(input, mat2, scale_a, scale_b, bias, scale_result,
# out_dtype); F.scaled_mm(mat_a, mat_b, scale_a, scale_recipe_a, scale_b, scale_recipe_b, swizzle_a,
# swizzle_b, bias, output_dtype) runs _scaled_mm_v2 with the recipes as lists of ints
sample(lambda: s(_fp8(16, 32), _fp8(16, 32).t(), torch.tensor(1.0), torch.tensor(1.0), None, None, torch.float32),
       getattr(torch, "_scaled_mm", None))
if hasattr(F, "ScalingType"):
    TENSORWISE = F.ScalingType.TensorWise
    sample(lambda: s(_fp8(16, 32), _fp8(16, 32).t(), torch.tensor(1.0), TENSORWISE, torch.tensor(1.0), TENSORWISE,
                     None, None, None, torch.float32), getattr(F, "scaled_mm", None))
    sample(lambda: s(_fp8(16, 32), _fp8(16, 32).t(), [torch.tensor(1.0)], [TENSORWISE.value], [], [torch.tensor(1.0)],
                     [TENSORWISE.value], [], None, torch.float32), getattr(torch, "_scaled_mm_v2", None))

# linear, convolution
sample(lambda: s(r(2, 3, 4), r(5, 4), r(5)), F.linear)
sample(lambda: s(r(2, 3), r(2, 4), r(5, 3, 4), r(5)), F.bilinear)
# conv(input, weight, bias, stride, padding, dilation, groups): two groups of Cin 2 -> Cout 3
sample(lambda: s(r(1, 4, 9), r(6, 2, 3), r(6), 2, 1, 1, 2), F.conv1d)
sample(lambda: s(r(1, 4, 7, 9), r(6, 2, 3, 2), r(6), 2, 1, 1, 2), F.conv2d)
sample(lambda: s(r(1, 4, 5, 6, 7), r(6, 2, 3, 2, 1), r(6), 2, 1, 1, 2), F.conv3d)
# conv_transpose(input, weight, bias, stride, padding, output_padding, groups): weight [Cin, Cout/g, *K]
sample(lambda: s(r(1, 4, 5), r(4, 3, 3), r(6), 2, 1, 1, 2), F.conv_transpose1d)
sample(lambda: s(r(1, 4, 5, 4), r(4, 3, 3, 2), r(6), 2, 1, 1, 2), F.conv_transpose2d)
sample(lambda: s(r(1, 4, 3, 4, 5), r(4, 3, 3, 2, 1), r(6), 2, 1, 1, 2), F.conv_transpose3d)

# normalisation: weight and bias given (their presence is counted), batch statistics asked for
sample(lambda: s(r(*X), (5,), r(5), r(5)), F.layer_norm)
sample(lambda: s(r(2, 4, 5), 2, r(4), r(4)), F.group_norm)
sample(lambda: s(r(*X), r(3), r(3), r(3), r(3), True), F.batch_norm)
sample(lambda: s(r(*X), r(3), r(3), r(3), r(3), False), F.instance_norm)  # running statistics
sample(lambda: s(r(*X), (5,), r(5)), getattr(F, "rms_norm", None))

# pooling and interpolation: stride and padding that change the windows
sample(lambda: s(r(1, 2, 9), 3, 2, 1), F.avg_pool1d)
sample(lambda: s(r(1, 2, 7, 9), 3, 2, 1), F.avg_pool2d)
sample(lambda: s(r(1, 2, 5, 6, 7), 3, 2, 1), F.avg_pool3d)
sample(lambda: s(r(1, 2, 9), 4), F.adaptive_avg_pool1d)
sample(lambda: s(r(1, 2, 7, 9), (3, 4)), F.adaptive_avg_pool2d)
sample(lambda: s(r(1, 2, 5, 6, 7), (2, 3, 4)), F.adaptive_avg_pool3d)
sample(lambda: s(r(1, 2, 4, 5), None, 2.0, "bilinear"), F.interpolate, F.upsample)

# attention
sample(lambda: s(r(2, 2, 3, 4), r(2, 2, 5, 4), r(2, 2, 5, 6)), F.scaled_dot_product_attention)


def _qkv(device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    # q [B, H, L, E], k and v [B, H, S, E]: head dim 8, as the fused kernels want
    return tuple(r(*shape, dtype=dtype).to(device) for shape in ((2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 8)))


# SDPA's fused kernels at the aten level; the CUDA-only ones (and the one for PrivateUse1 backends)
# run on meta tensors, whose kernels compute the output shapes: all a rule reads
sample(lambda: s(*_qkv()), getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None))
sample(lambda: s(*_qkv("meta", torch.float16)),
       getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None),
       getattr(torch.ops.aten, "_scaled_dot_product_fused_attention_overrideable", None))
sample(lambda: s(*_qkv("meta", torch.float16), None, False),  # attn_bias, compute_log_sumexp
       getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None),
       getattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention", None))

E, HEADS = 8, 2


def _mha() -> Sample:
    # multi_head_attention_forward(query [L, N, E], key [S, N, E], value, embed_dim, num_heads,
    # in_proj_weight, in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight,
    # out_proj_bias): bias_k and add_zero_attn each add a key, so reading them shows in the count
    return s(r(3, 2, E), r(5, 2, E), r(5, 2, E), E, HEADS, r(3 * E, E), r(3 * E), r(1, 1, E), r(1, 1, E),
             True, 0.0, r(E, E), r(E), False)


sample(_mha, F.multi_head_attention_forward)

FLEX = getattr(torch._higher_order_ops, "flex_attention", None)


def _flex() -> Sample:
    # the operator torch.nn.attention.flex_attention calls: (query, key, value, score_mod,
    # block_mask as a tuple, scale, kernel_options); an empty block mask computes every score
    from torch.nn.attention.flex_attention import _create_empty_block_mask, _identity

    q, k, v = r(1, 2, 128, 16), r(1, 2, 128, 16), r(1, 2, 128, 8)
    return s(q, k, v, _identity, _create_empty_block_mask(q, k).as_tuple(), 0.25, {})


if isinstance(FLEX, torch._ops.HigherOrderOperator):
    sample(_flex, FLEX)

# losses: [N, C] = [3, 5] logits and class indices, with every argument that changes the count
# (weights, a reduction other than the default, smoothing, beta = 0, log targets, batchmean)
sample(lambda: s(r(3, 5), idx(0, 4, 2), r(5), None, -100, None, "sum", 0.1), F.cross_entropy)
sample(lambda: s(r(3, 5), idx(0, 4, 2), r(5), None, -100, None, "sum"), F.nll_loss)
sample(lambda: s(r(3, 5), r(3, 5), None, None, "sum", r(3, 5)), F.mse_loss)
sample(lambda: s(r(3, 5), r(3, 5), None, None, "sum"), F.l1_loss)  # its weight does not survive __torch_function__
sample(lambda: s(r(3, 5), r(3, 5), None, None, "sum", 0.0), F.smooth_l1_loss)
sample(lambda: s(r(3, 5), r(3, 5), "sum", 0.5, r(3, 5)), F.huber_loss)
sample(lambda: s(r(3, 5), r(3, 5), r(5), None, None, "sum"), F.binary_cross_entropy)
sample(lambda: s(r(3, 5), r(3, 5), r(5), None, None, "sum", r(5)), F.binary_cross_entropy_with_logits)
sample(lambda: s(r(3, 5), r(3, 5), None, None, "batchmean", True), F.kl_div)
sample(lambda: s(r(3, 5), r(3, 5), None, None, "sum"), F.soft_margin_loss)
sample(lambda: s(r(3), r(3), r(3), 0.5, None, None, "sum"), F.margin_ranking_loss)
sample(lambda: s(r(3, 5), r(3, 5), r(3), 0.5, None, None, "sum"), F.cosine_embedding_loss)
# their aten operators, the reduction an at::Reduction (2: sum)
sample(lambda: s(r(3, 5), idx(0, 4, 2), r(5), 2, -100, 0.1), torch.ops.aten.cross_entropy_loss)
sample(lambda: s(r(3, 5), idx(0, 4, 2), r(5), 2, -100), torch.ops.aten.nll_loss_forward, torch.ops.aten.nll_loss,
       torch.ops.aten.nll_loss_nd)
sample(lambda: s(r(2, 5, 2, 2), idx(0, 4, 2, 1, 3, 0, 1, 2).view(2, 2, 2), r(5), 2, -100),
       torch.ops.aten.nll_loss2d_forward)
sample(lambda: s(r(3, 5), r(3, 5), 2), torch.ops.aten.mse_loss, torch.ops.aten.l1_loss, torch.ops.aten.soft_margin_loss)
sample(lambda: s(r(3, 5), r(3, 5), 2, 0.0), torch.ops.aten.smooth_l1_loss)
sample(lambda: s(r(3, 5), r(3, 5), 2, 0.5), torch.ops.aten.huber_loss)
sample(lambda: s(r(3, 5), r(3, 5), r(3, 5), 2), torch.ops.aten.binary_cross_entropy)
sample(lambda: s(r(3, 5), r(3, 5), r(3, 5), r(5), 2), torch.ops.aten.binary_cross_entropy_with_logits)
sample(lambda: s(r(3, 5), r(3, 5), 2, log_target=True), torch.ops.aten.kl_div)
sample(lambda: s(r(3), r(3), r(3), 0.5, 2), torch.ops.aten.margin_ranking_loss)
sample(lambda: s(r(3, 5), r(3, 5), r(3), 0.5, 2), torch.ops.aten.cosine_embedding_loss)



# backward operators (hooks.rules.backward): what autograd runs in .backward(), called directly
A = torch.ops.aten


def _norm_stats(kind: str) -> Sample:
    x, g, c = r(2, 4, 3, 3), r(2, 4, 3, 3), r(4)
    if kind == "layer":
        _, mean, rstd = A.native_layer_norm.default(x, [3, 3], r(3, 3), r(3, 3), 1e-5)
        return s(g, x, [3, 3], mean, rstd, r(3, 3), r(3, 3), [True, True, True])
    if kind == "group":
        _, mean, rstd = A.native_group_norm.default(x, c, c, 2, 4, 9, 2, 1e-5)
        return s(g, x, mean, rstd, c, 2, 4, 9, 2, [True, True, True])
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    _, mean, invstd = A.native_batch_norm.default(x, c, c, running_mean, running_var, True, 0.1, 1e-5)
    extra = (torch.empty(0),) if kind == "batch_norm_backward" else ()
    return s(g, x, c, running_mean, running_var, mean, invstd, True, 1e-5, [True, True, True], *extra)


def _meta_norm(kind: str) -> Sample:
    x, c = torch.empty(2, 4, 3, 3, device="meta"), torch.empty(4, device="meta")
    if kind == "rms":
        weight = torch.empty(3, device="meta")
        _, rstd = A._fused_rms_norm.default(x, [3], weight, 1e-5)
        return s(x, x, [3], rstd, weight, [True, True])
    extra = (torch.empty(0, device="meta"),) if kind == "cudnn" else ()
    return s(x, x, c, c, c, c, c, 1e-5, *extra)


def _embedding_bag(dense: bool) -> Sample:
    indices, offsets, weight = idx(1, 2, 2, 0, 3), idx(0, 2), r(10, 4)
    _, offset2bag, bag_size, max_indices = A._embedding_bag.default(weight, indices, offsets, False, 1)
    bags = idx(0, 0, 1, 1, 1)
    if dense:
        return s(r(2, 4), indices, bags, bag_size, max_indices, 10, False, 1, None)
    return s(r(2, 4), indices, offsets, offset2bag, bag_size, max_indices, 10, False, 1, False, None)


def _nll(two_d: bool) -> Sample:
    logp = r(2, 3, 4, 4).log() if two_d else r(4, 5).log()
    target = torch.randint(0, 3, (2, 4, 4)) if two_d else idx(0, 1, 4, 2)
    total_weight = torch.tensor(float(target.numel()))
    return s(torch.tensor(1.0), logp, target, None, 1, -100, total_weight)


def _meta_attention(kind: str) -> Sample:
    q, k, v = _qkv("meta", torch.float16)
    out, lse = torch.empty_like(q), torch.empty(2, 2, 3, device="meta")
    z = torch.empty((), dtype=torch.int64, device="meta")
    if kind == "flash":
        return s(out, q, k, v, out, lse, z, z, 3, 5, 0.0, False, z, z)
    if kind == "efficient":
        return s(out, q, k, v, None, out, lse, z, z, 0.0, [True, True, True, False])
    if kind == "cudnn":
        return s(out, q, k, v, out, lse, z, z, None, None, None, 3, 5, 0.0, False)
    return s(out, q, k, v, torch.empty(0, device="meta"), [True, True, True, False], out, lse, None, None, 3, 5, 0.0,
             False, z, z)


def _cpu_flash_backward() -> Sample:
    q, k, v = _qkv()
    out, lse = A._scaled_dot_product_flash_attention_for_cpu.default(q, k, v)
    return s(torch.ones_like(out), q, k, v, out, lse, 0.0, False)


def _weight_norm() -> Sample:
    v, g = r(6, 4), r(6, 1)
    w, norms = A._weight_norm_interface.default(v, g, 0)
    return s(torch.ones_like(w), v, g, norms, 0)


G3, X3 = (lambda: r(2, 3, 4)), (lambda: r(2, 3, 4))
sample(lambda: s(G3(), X3()), A.hardsigmoid_backward, A.hardswish_backward, A.mish_backward)
sample(lambda: s(G3(), X3(), 0.01, False), A.leaky_relu_backward)
sample(lambda: s(G3(), X3(), r(2, 3, 4), 0.1, 0.3, True, False), A.rrelu_with_noise_backward)
sample(lambda: s(G3(), X3(), r(2, 3, 4)), A.log_sigmoid_backward)
sample(lambda: s(G3(), X3(), 1.0, 20.0), A.softplus_backward)
sample(lambda: s(G3(), X3(), r(1, 3, 1)), A._prelu_kernel_backward)
sample(lambda: s(G3(), r(2, 3, 8), 2), A.glu_backward)
sample(lambda: s(G3(), 1.0, 1.0, 1.0, False, X3()), A.elu_backward)
sample(lambda: s(G3(), X3().softmax(-1), -1, torch.float32), A._softmax_backward_data, A._log_softmax_backward_data)
sample(lambda: s(G3(), X3().softmax(-1), torch.zeros(2, 3, 4, dtype=torch.bool), -1), A._masked_softmax_backward)
sample(lambda: _norm_stats("layer"), A.native_layer_norm_backward)
sample(lambda: _norm_stats("group"), A.native_group_norm_backward)
sample(lambda: _norm_stats("native"), A.native_batch_norm_backward)
sample(lambda: _norm_stats("batch_norm_backward"), A.batch_norm_backward)
sample(lambda: _meta_norm("cudnn"), A.cudnn_batch_norm_backward)
sample(lambda: _meta_norm("miopen"), A.miopen_batch_norm_backward)
sample(lambda: _meta_norm("rms"), getattr(A, "_fused_rms_norm_backward", None))
sample(lambda: s(r(1, 2, 3, 3), r(1, 2, 5, 5), [3, 3], [2, 2], [1, 1], False, True, None), A.avg_pool2d_backward)
sample(lambda: s(r(1, 1, 2, 2, 2), r(1, 1, 4, 4, 4), [2, 2, 2], [2, 2, 2], [0, 0, 0], False, True, None),
       A.avg_pool3d_backward)
sample(lambda: s(r(1, 2, 3, 3), r(1, 2, 5, 5)), A._adaptive_avg_pool2d_backward)
sample(lambda: s(r(1, 1, 2, 2, 2), r(1, 1, 4, 4, 4)), A._adaptive_avg_pool3d_backward)
for _d, _ops in ((1, (A.upsample_nearest1d_backward, A._upsample_nearest_exact1d_backward)),
                 (2, (A.upsample_nearest2d_backward, A._upsample_nearest_exact2d_backward)),
                 (3, (A.upsample_nearest3d_backward, A._upsample_nearest_exact3d_backward))):
    sample(lambda d=_d: s(r(1, 2, *[4] * d), [4] * d, [1, 2, *[2] * d]), *_ops)
for _d, _op in ((1, A.upsample_linear1d_backward), (2, A.upsample_bilinear2d_backward),
                (3, A.upsample_trilinear3d_backward)):
    sample(lambda d=_d: s(r(1, 2, *[4] * d), [4] * d, [1, 2, *[2] * d], False), _op)
sample(lambda: s(r(1, 2, 4, 4), [4, 4], [1, 2, 2, 2], False), A.upsample_bicubic2d_backward)
for _d, _ops in ((1, (A.reflection_pad1d_backward, A.replication_pad1d_backward)),
                 (2, (A.reflection_pad2d_backward, A.replication_pad2d_backward)),
                 (3, (A.reflection_pad3d_backward, A.replication_pad3d_backward))):
    sample(lambda d=_d: s(r(1, 2, *[6] * d), r(1, 2, *[4] * d), [1, 1] * d), *_ops)
sample(lambda: s(r(3, 3, 3), [3, 8], 1, 3, 2), A.unfold_backward)
sample(lambda: s(r(1, 8, 9), [4, 4], [2, 2], [1, 1], [0, 0], [1, 1]), A.col2im)
sample(lambda: s(r(3, 4), [5, 4], 0, idx(0, 0, 2)), A.index_select_backward)
sample(lambda: s(r(2, 4, 8), idx(1, 2, 2, 0).view(1, 4).expand(2, 4), 10, -1, False), A.embedding_dense_backward)
sample(lambda: _embedding_bag(dense=False), A._embedding_bag_backward)
sample(lambda: _embedding_bag(dense=True), A._embedding_bag_dense_backward)
sample(lambda: s(r(2, 4), r(10, 4), idx(1, 2, 2, 0, 3), idx(0, 2), idx(0, 0, 1, 1, 1), 0),
       A._embedding_bag_per_sample_weights_backward)
def _mkldnn_rnn_layer(backward: bool) -> Sample:
    x, state, weights = r(5, 3, 8), torch.zeros(3, 16), [r(64, 8), r(64, 16), r(64), r(64)]
    if not backward:
        return s(x, *weights, state, state, False, [], 2, 16, 1, True, False, False, False)
    output, hy, cy, workspace = A.mkldnn_rnn_layer(x, *weights, state, state, False, [], 2, 16, 1, True, False,
                                                   False, True)
    return s(x, *weights, state, state, output, hy, cy, torch.ones_like(output), None, None, False, 2, 16, 1, True,
             True, False, [], False, workspace)


# F.embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
# per_sample_weights): a weighted sum, so every argument the rule reads is in play
sample(lambda: s(idx(1, 2, 2, 0, 3), r(10, 4), idx(0, 2), None, 2.0, False, "sum", False, r(5)), F.embedding_bag)
# _embedding_bag(weight, indices, offsets, scale_grad_by_freq, mode, sparse, per_sample_weights)
sample(lambda: s(r(10, 4), idx(1, 2, 2, 0, 3), idx(0, 2), False, 0, False, r(5)),
       A._embedding_bag, A._embedding_bag_forward_only)
sample(lambda: _mkldnn_rnn_layer(backward=False), A.mkldnn_rnn_layer)
sample(lambda: _mkldnn_rnn_layer(backward=True), A.mkldnn_rnn_layer_backward)
sample(lambda: _nll(two_d=False), A.nll_loss_backward)
sample(lambda: _nll(two_d=True), A.nll_loss2d_backward)
sample(lambda: s(torch.tensor(1.0), r(4, 5), r(4, 5), 1), A.mse_loss_backward, A.soft_margin_loss_backward)
sample(lambda: s(torch.tensor(1.0), r(4, 5), r(4, 5), 1, 1.0), A.smooth_l1_loss_backward, A.huber_loss_backward)
sample(lambda: s(torch.tensor(1.0), r(4, 5), r(4, 5), r(4, 5), 1), A.binary_cross_entropy_backward)
sample(_cpu_flash_backward, A._scaled_dot_product_flash_attention_for_cpu_backward)
sample(lambda: _meta_attention("flash"), getattr(A, "_scaled_dot_product_flash_attention_backward", None))
sample(lambda: _meta_attention("efficient"), getattr(A, "_scaled_dot_product_efficient_attention_backward", None))
sample(lambda: _meta_attention("cudnn"), getattr(A, "_scaled_dot_product_cudnn_attention_backward", None))
sample(lambda: _meta_attention("overrideable"),
       getattr(A, "_scaled_dot_product_fused_attention_overrideable_backward", None))
sample(_weight_norm, A._weight_norm_interface_backward)
sample(lambda: s(r(3, 4), idx(0, 0, 5), r(3), True), A.put)
# grouped, to show reading groups' effect: weight [Cout, Cin/g, *K]
sample(lambda: s(r(2, 4, 3, 3), r(2, 4, 5, 5), r(4, 2, 3, 3), [4], [1, 1], [0, 0], [1, 1], False, [0, 0], 2,
                 [True, True, True]), A.convolution_backward)


# --------------------------------------------------------------------------- keyword names

# The keywords are signature_of()'s names, the ones positional() moves, so torch accepting them in
# the sweep proves those names too. torch's table of overridable functions had some wrong, and torch
# rejected them: xlogy(x, y) for (input, other), dot's other for tensor, prod's dtype and
# logsumexp's names for dim, Tensor.__rpow__'s exponent for other; signature_of() reads a builtin's
# operator schemas and a Python function's own signature before that table.

METHODS = {id(getattr(torch.Tensor, name)) for name in dir(torch.Tensor)}


def is_method(func: Callable) -> bool:
    """A ``torch.Tensor`` method: its first argument is the receiver, never passed by keyword."""
    return id(func) in METHODS


# Positions signature_of() leaves unnamed because the operator's overloads disagree on them
# (var(input, unbiased) and var(input, dim, unbiased, keepdim)), with the keyword torch takes there.
# positional() leaves these in kwargs, so no rule may read them by index.
UNNAMED: dict[Callable, tuple[str, ...]] = {
    f: ("dim",) for f in variants("var", "std", "var_mean", "std_mean", owners=(torch, torch.Tensor))
}

# Functions whose arguments cannot be passed by keyword at all: the keyword call is the positional one.
KEYWORDLESS: dict[Callable, str] = {
    torch.einsum: "einsum(*args): the equation and operands are positional only",
}


def keyword_names(func: Callable, nargs: int) -> list[str | None]:
    """For each of ``nargs`` positional arguments, the keyword to pass it by (None: positional)."""
    if func in KEYWORDLESS:
        return [None] * nargs
    params = signature_of(func)
    if params is None:
        raise AssertionError(f"{function_id(func)}: signature_of() knows no signature, so positional() "
                             "cannot move its keyword arguments")
    names: list[str | None] = [name for name, _ in params][:nargs]
    names += UNNAMED.get(func, ())[: nargs - len(names)]
    if len(names) < nargs:
        raise AssertionError(f"{function_id(func)}: signature_of() names {len(names)} parameters, "
                             f"the sample passes {nargs}")
    if is_method(func):
        names[0] = None
    return names


def function_id(func: Callable) -> str:
    """``torch.addmm``, ``Tensor.addmv_``, ``F.linear``, ``aten.<op>``: a readable test id."""
    if isinstance(func, torch._ops.OpOverloadPacket):
        return str(func)
    if isinstance(func, torch._ops.HigherOrderOperator):
        return f"higher_order.{func.name()}"
    name = getattr(func, "__name__", "")
    for owner, prefix in ((F, "F"), (torch.Tensor, "Tensor"), (torch.linalg, "linalg"), (torch, "torch")):
        if getattr(owner, name, None) is func:
            return f"{prefix}.{name}"
    for owner, prefix in ((torch.Tensor, "Tensor"), (torch, "torch")):
        for other in dir(owner):
            if getattr(owner, other, None) is func:
                return f"{prefix}.{other}"
    return repr(func)


# --------------------------------------------------------------------------- the sweep


class Call(nn.Module):
    """``forward(*values)`` calls ``func`` with each value positionally or by its keyword."""

    def __init__(self, func: Callable, names: list[str | None], kwonly: dict[str, Any]) -> None:
        super().__init__()
        self.func, self.names, self.kwonly = func, names, kwonly

    def forward(self, *values):
        args = [v for v, name in zip(values, self.names) if name is None]
        kwargs = {name: v for v, name in zip(values, self.names) if name is not None}
        return self.func(*args, **kwargs, **self.kwonly)


def counts_of(func: Callable, by_keyword: bool) -> tuple[tuple[int, int, int], set[str | None]]:
    """(MACs, FLOPs, matmul FLOPs) of one call of ``func`` on its sample, nothing uncounted, and the
    rules that counted the functions it ran."""
    call = SAMPLES[func]()
    names = keyword_names(func, len(call.args)) if by_keyword else [None] * len(call.args)
    model = Call(func, names, call.kwonly)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecations (F.upsample), slow eager flex_attention
        warnings.simplefilter("error", UncountedWarning)
        result = profile(model, inputs=call.args)
        call = SAMPLES[func]()  # in-place functions changed the first sample
        records = capture_forward(model, lambda: model(*call.args), REGISTRY.resolver()).records
    assert result.uncounted == ()
    return (result.total_macs, result.total_flops, result.matmul_flops), {r.rule for r in records if r.function}


COUNTED = {f: rule for f, rule in REGISTRY.function_rules.items() if not rule.free}


@pytest.mark.parametrize("func", list(COUNTED), ids=function_id)
def test_rule_reads_arguments_by_keyword_as_by_position(func):
    if func not in SAMPLES:
        pytest.fail(f"{function_id(func)} has the rule {COUNTED[func].name} but no sample: add one to SAMPLES")
    by_position, rules = counts_of(func, by_keyword=False)
    assert by_position[1] > 0, f"{function_id(func)}'s sample counts no work"
    by_keyword, keyword_rules = counts_of(func, by_keyword=True)
    assert by_keyword == by_position
    # the function's own rule counted both calls (not the aten operators underneath)
    assert rules == keyword_rules == {COUNTED[func].name}


def test_every_sample_is_of_a_counted_function():
    assert [function_id(f) for f in SAMPLES if f not in COUNTED] == []


@pytest.mark.parametrize("func", list(UNNAMED), ids=function_id)
def test_unnamed_positions_are_still_unnamed(func):
    # an entry goes once signature_of() names the position itself
    assert len(signature_of(func)) < len(SAMPLES[func]().args)


# --------------------------------------------------------------------------- the issue's examples


def totals(fn: Callable, *inputs: torch.Tensor) -> tuple[int, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedWarning)
        result = profile(FunctionCall(fn), inputs=inputs)
    return result.total_macs, result.total_flops, result.matmul_flops


def matmul(macs: int) -> tuple[int, int, int]:
    """(MACs, FLOPs, matmul FLOPs) of matmul-like work: 2 FLOPs per MAC."""
    return macs, 2 * macs, 2 * macs


@pytest.mark.parametrize(("fn", "shapes", "expected"), [
    pytest.param(lambda x, a, b: torch.baddbmm(x, batch1=a, batch2=b), [(2, 3, 5), (2, 3, 4), (2, 4, 5)],
                 matmul(2 * 3 * 5 * 4), id="baddbmm(x, batch1=, batch2=)"),
    pytest.param(lambda y, m, v: y.addmv(mat=m, vec=v), [(3,), (3, 4), (4,)],
                 matmul(3 * 4), id="x.addmv(mat=, vec=)"),
    pytest.param(lambda y, m, v: torch.addmv(y, vec=v, mat=m, beta=0.5), [(3,), (3, 4), (4,)],
                 matmul(3 * 4), id="addmv(x, vec=, mat=, beta=)"),
    pytest.param(lambda x, a, b: torch.addmm(input=x, mat1=a, mat2=b), [(3, 5), (3, 4), (4, 5)],
                 matmul(3 * 5 * 4), id="addmm(input=, mat1=, mat2=)"),
    pytest.param(lambda x, a, b: torch.addmm(x, a, mat2=b, alpha=2), [(3, 5), (3, 4), (4, 5)],
                 matmul(3 * 5 * 4), id="addmm(x, a, mat2=, alpha=)"),
    pytest.param(lambda x, w: F.linear(input=x, weight=w), [(2, 3, 4), (5, 4)],
                 matmul(2 * 3 * 5 * 4), id="linear(input=, weight=)"),
    pytest.param(lambda x, w, b: F.linear(x, bias=b, weight=w), [(2, 3, 4), (5, 4), (5,)],
                 matmul(2 * 3 * 5 * 4), id="linear(x, bias=, weight=)"),
])
def test_issue_examples_closed_form(fn, shapes, expected):
    assert totals(fn, *(r(*shape) for shape in shapes)) == expected


def test_sdpa_by_keyword_closed_form():
    # q [B, H, L, E], k [B, H, S, E], v [B, H, S, Ev]: scores and weighted sum are B*H*L*S*(E + Ev)
    # MACs; each score is scaled (1 FLOP) and each row of S scores takes a softmax (3S - 1 FLOPs)
    b, h, l, s_, e, ev = 2, 3, 4, 5, 6, 7
    q, k, v = r(b, h, l, e), r(b, h, s_, e), r(b, h, s_, ev)
    macs = b * h * l * s_ * (e + ev)
    flops = 2 * macs + b * h * l * s_ + b * h * l * (3 * s_ - 1)
    expected = (macs, flops, 2 * macs)
    assert totals(lambda q, k, v: F.scaled_dot_product_attention(query=q, key=k, value=v), q, k, v) == expected
    assert totals(lambda q, k, v: F.scaled_dot_product_attention(q, value=v, key=k), q, k, v) == expected


# --------------------------------------------------------------------------- positional() itself


def test_positional_moves_keywords_to_their_positions():
    x, a, b = r(2, 3, 5), r(2, 3, 4), r(2, 4, 5)
    assert positional(torch.baddbmm, (x,), {"batch1": a, "batch2": b}) == ((x, a, b), {})
    assert positional(torch.baddbmm, (), {"batch2": b, "input": x, "batch1": a}) == ((x, a, b), {})
    # a method's receiver is its first argument; names torch's table gets wrong are read from the schema
    assert positional(torch.Tensor.baddbmm, (x,), {"batch2": b, "batch1": a}) == ((x, a, b), {})
    assert positional(torch.Tensor.xlogy, (x,), {"other": a}) == ((x, a), {})  # the table says xlogy(x, y)
    assert positional(torch.dot, (), {"input": a, "tensor": b}) == ((a, b), {})  # the table says other


def test_positional_fills_gaps_with_defaults():
    # a Python function: layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-05)
    x, b = r(2, 3, 5), r(5)
    assert positional(F.layer_norm, (x, (5,)), {"bias": b}) == ((x, (5,), None, b), {})
    # a builtin, by its operator's schema: sdpa(query, key, value, attn_mask=None, dropout_p=0.0, ...)
    q, k = r(1, 3, 4), r(1, 5, 4)
    assert positional(F.scaled_dot_product_attention, (q, k), {"value": k, "dropout_p": 0.5}) == (
        (q, k, k, None, 0.5), {})


def test_positional_leaves_keyword_only_arguments_in_kwargs():
    x, a, b = r(3, 5), r(3, 4), r(4, 5)
    # add(input, other, *, alpha); addmm(input, mat1, mat2, *, beta, alpha); gelu(input, *, approximate)
    assert positional(torch.add, (x,), {"other": x, "alpha": 2}) == ((x, x), {"alpha": 2})
    assert positional(torch.addmm, (x, a), {"mat2": b, "beta": 0.5}) == ((x, a, b), {"beta": 0.5})
    assert positional(F.gelu, (x,), {"approximate": "tanh"}) == ((x,), {"approximate": "tanh"})


def test_positional_leaves_unknown_names_and_missing_arguments_alone():
    x, a = r(2, 3, 5), r(2, 3, 4)
    unknown = {"not_an_argument": a}
    assert positional(torch.baddbmm, (x,), unknown) == ((x,), unknown)
    missing = {"batch2": a}  # batch1 is required and absent: nothing to fill its place with
    assert positional(torch.baddbmm, (x,), missing) == ((x,), missing)
    assert positional(torch.baddbmm, (x, a), {}) == ((x, a), {})
    assert positional(lambda *args, **kwargs: None, (x,), unknown) == ((x,), unknown)
