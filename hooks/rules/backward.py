"""Rules for the aten operators that autograd runs in ``.backward()``, each on its operator packet.

The backward pass is counted at the aten level (``hooks.aten.aten_rule``): ``mm`` and ``bmm`` by
FlopCounterMode's formulas and pointwise-tagged operators (``gelu_backward``, ``silu_backward``,
``add``...) at 1 FLOP per element need no rule here. This module covers the rest, with the
forward's conventions: FLOPs per element of each textbook formula, exp, log, tanh and erf one FLOP
each, comparisons, selects and sign flips free, the incoming gradient and a reduction's constant
(``1/N`` of a mean) folded into one factor, reductions 1 FLOP per element read, and MACs only for
matmul-like work (convolution, attention). Each rule's comment gives its formula.

- Free (0 by decision): views, allocations and scatters that write each gradient value to one
  place (``select_backward``, ``slice_backward``, ``_unsafe_view``, ``new_empty_strided``...),
  the selects among activation backwards (``threshold_backward``: ReLU's, ``hardtanh_backward``:
  ReLU6's, the shrinks'), and max pooling's backward, which routes each gradient to its argmax as
  the forward's comparisons are free (where overlapping windows share an argmax the gradients
  add; which do is data, so those adds are not counted).
- Accumulating a gradient costs one add per value accumulated, as the kernels do it, into a
  zero-filled buffer: embedding rows, average-pooling windows, interpolation taps, padding
  reflections and unfolded windows. ``index_add`` and ``scatter_add`` count the same way.
- Normalisation counts per input element (see ``norm_backward_flops``), honouring ``output_mask``.
- ``convolution_backward``: each of grad_input and grad_weight costs the forward's MACs, the bias
  gradient 1 per element of grad_output (as a Linear's, an ``aten.sum``); FlopCounterMode's
  formula counts a grouped convolution's grad_weight ``groups`` times over.
- Attention kernels count what the eager attention's backward computes, whichever kernel runs:
  four matmuls, twice the forward's MACs, and 5 FLOPs per score; the scores a fused kernel
  recomputes are not counted (FlopCounterMode's ``sdpa_backward_flop_count`` counts them).

- ``mkldnn_rnn_layer_backward`` (a CPU LSTM's layer): twice the forward's matmul MACs (the input's,
  the weights' and the hidden state's gradients) and the textbook LSTM cell backward per unit.

Left uncounted (reported as usual): ``_cudnn_rnn_backward``,
``grid_sampler_2d_backward``, ``_ctc_loss_backward``, the margin losses' backwards,
``_cdist_backward``, antialiased interpolation's backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod
from typing import Any

import torch

from hooks.counts import Counts
from hooks.registry import free_functions, function_rule
from hooks.rules.common import arg
from hooks.rules.pooling import adaptive_window_sum, pool_window_sum

__all__ = [
    "BACKWARD_FLOPS_PER_ELEMENT",
    "SOFTMAX_BACKWARD_FLOPS",
    "LOSS_BACKWARD_FLOPS_PER_ELEMENT",
    "INTERPOLATION_BACKWARD_FLOPS",
    "norm_backward_flops",
    "rms_norm_backward_flops",
    "attention_backward_counts",
    "per_element_counts",
    "elu_backward_counts",
    "convolution_backward_counts",
    "softmax_backward_counts",
    "layer_norm_backward_counts",
    "group_norm_backward_counts",
    "batch_norm_backward_counts",
    "cudnn_batch_norm_backward_counts",
    "rms_norm_backward_counts",
    "avg_pool_backward_counts",
    "adaptive_avg_pool_backward_counts",
    "upsample_backward_counts",
    "accumulate_backward_counts",
    "embedding_backward_counts",
    "embedding_bag_backward_counts",
    "embedding_bag_dense_backward_counts",
    "embedding_bag_per_sample_weights_backward_counts",
    "nll_loss_backward_counts",
    "binary_cross_entropy_backward_counts",
    "sdpa_backward_counts",
    "weight_norm_backward_counts",
    "put_counts",
    "LSTM_BACKWARD_FLOPS_PER_UNIT",
    "mkldnn_rnn_layer_backward_counts",
]


def _packets(*names: str) -> list[torch._ops.OpOverloadPacket]:
    """``torch.ops.aten.<name>`` for each name this torch has."""
    return [getattr(torch.ops.aten, name) for name in names if hasattr(torch.ops.aten, name)]


def _register(rule: Callable[[tuple, dict, Any], Counts], *names: str) -> None:
    packets = _packets(*names)
    if packets:
        function_rule(*packets)(rule)


def convolution_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
    # transposed, output_padding, groups, output_mask); weight [Cout, Cin/g, *K] ([Cin, Cout/g, *K]
    # transposed). grad_input = conv_transpose(g, w) and grad_weight = conv(x, g) each pair every
    # product x * w of the forward with g once: the forward's MACs each, an output (a transposed
    # conv's input) element times weight.shape[1:]. grad_bias = sum(g): 1 per element of g.
    grad_output, x, weight = args[0], args[1], args[2]
    transposed, mask = arg(args, kwargs, 7, "transposed"), arg(args, kwargs, 10, "output_mask")
    forward_macs = (x.numel() if transposed else grad_output.numel()) * prod(weight.shape[1:])
    return Counts.matmul(forward_macs * (bool(mask[0]) + bool(mask[1]))) + Counts.elementwise(
        flops=grad_output.numel() if mask[2] else 0
    )


# FlopCounterMode's formula counts a grouped convolution's grad_weight over all input channels,
# `groups` times too many (33 times the forward's MACs for a depthwise conv's backward, not 2)
_register(convolution_backward_counts, "convolution_backward")


# Data movement: views, allocations, and scatters of each gradient value to one place (a slice,
# a selected index, a diagonal; im2col copies patches). The selects among activation backwards
# pass g or 0 by a comparison; threshold_backward is tagged pointwise but is ReLU's select.
free_functions(*_packets(
    "select_backward", "slice_backward", "diagonal_backward", "as_strided_scatter", "_unsafe_view",
    "new_empty_strided", "im2col",
    "_sparse_coo_tensor_with_dims_and_tensors",  # a sparse gradient (Embedding(sparse=True)) built from its parts
    "max_pool2d_with_indices_backward", "max_pool3d_with_indices_backward",
    "adaptive_max_pool2d_backward", "adaptive_max_pool3d_backward",
    "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
    "threshold_backward", "hardtanh_backward", "hardshrink_backward", "softshrink_backward",
))


# FLOPs per element of grad_output of the activation backwards that carry no pointwise tag:
# grad_input = g * f'(x), counting the arithmetic of f' where it is not a constant.
BACKWARD_FLOPS_PER_ELEMENT: dict[str, int] = {
    "hardsigmoid_backward": 1,  # g / 6 inside (-3, 3), 0 outside
    "leaky_relu_backward": 1,  # g * slope where x < 0
    "rrelu_with_noise_backward": 1,  # g * noise (training) or g * slope (eval) where x < 0
    "hardswish_backward": 3,  # g * (x / 3 + 0.5) inside (-3, 3)
    "log_sigmoid_backward": 4,  # g * (m - s * z / (1 + z)), z = exp(-|x|) the forward's buffer
    "softplus_backward": 5,  # z = exp(beta * x); g * z / (z + 1) below the threshold
    "_prelu_kernel_backward": 2,  # grad_input g * w and grad_weight g * x where x < 0 (summed after)
    # per element of grad_output, half the input: out = a * sigmoid(b); s = sigmoid(b) 3,
    # grad_a = g * s 1, grad_b = grad_a * a * (1 - s) 3
    "glu_backward": 7,
    # t = tanh(log(1 + exp(x))) 4, s = 1 / (1 + exp(-x)) 3; g * (t + x * s * (1 - t * t)) 6
    "mish_backward": 13,
}


def per_element_counts(
    name: str, flops_per_element: int, argument: int = 0
) -> Callable[[tuple, dict, Any], Counts]:
    """A rule named ``<name>_counts`` counting ``flops_per_element`` per element of the operator's
    ``argument``-th argument (grad_output, or a loss's input)."""

    def rule(args: tuple, kwargs: dict, out) -> Counts:
        return Counts.elementwise(flops=flops_per_element * args[argument].numel())

    rule.__name__ = rule.__qualname__ = f"{name.lstrip('_')}_counts"
    return rule


for _name, _flops in BACKWARD_FLOPS_PER_ELEMENT.items():
    _register(per_element_counts(_name, _flops), _name)


def elu_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # elu_backward(grad_output, alpha, scale, input_scale, is_result, self_or_result); where x < 0,
    # with the constants folded: from the input g * (alpha * scale * input_scale) * exp(input_scale * x)
    # 4 FLOPs, from the result (in-place ELU) g * input_scale * (y + alpha * scale) 3 FLOPs
    is_result = arg(args, kwargs, 4, "is_result")
    return Counts.elementwise(flops=(3 if is_result else 4) * args[0].numel())


_register(elu_backward_counts, "elu_backward")


# (g - sum(g * y)) * y for softmax, g - exp(y) * sum(g) for log-softmax (y the forward's output):
# a product, a sum, a subtraction and a product, or a sum, an exp, a product and a subtraction
SOFTMAX_BACKWARD_FLOPS = 4


def softmax_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _softmax_backward_data(grad_output, output, dim, input_dtype): 4 per element
    return Counts.elementwise(flops=SOFTMAX_BACKWARD_FLOPS * args[0].numel())


_register(
    softmax_backward_counts, "_softmax_backward_data", "_log_softmax_backward_data", "_masked_softmax_backward"
)


def norm_backward_flops(
    numel: int, output_mask: Sequence[bool], weight: bool, batch_stats: bool = True
) -> int:
    """FLOPs of a norm's backward over ``numel`` input elements, for the gradients in ``output_mask``
    (input, weight, bias).

    With x_hat = (x - mean) * r (r = 1/std), gamma the weight, g the gradient, and means over
    each group of n elements that share statistics:
    grad_input = r * (g*gamma - mean(g*gamma) - x_hat * mean(g*gamma*x_hat)) from batch statistics:
    x_hat 2, g*gamma 1 (none without weight), mean(g*gamma) 1 (n - 1 adds and a division per n),
    mean(g*gamma*x_hat) 2, x_hat * b 1, two subtractions 2, * r 1: 10 per element, 9 without weight.
    From running statistics (BatchNorm in eval) grad_input = g * gamma * r: 2, 1 without weight.
    grad_weight = sum(g * x_hat) over the other dimensions: 2, plus 2 for x_hat when grad_input
    did not compute it. grad_bias = sum(g): 1.
    """
    grad_input, grad_weight, grad_bias = output_mask
    flops = 0
    if grad_input:
        flops += 2 + weight + 1 + 2 + 1 + 2 + 1 if batch_stats else weight + 1
    if grad_weight:
        flops += 2 if grad_input and batch_stats else 2 + 2
    if grad_bias:
        flops += 1
    return numel * flops


def rms_norm_backward_flops(numel: int, output_mask: Sequence[bool], weight: bool) -> int:
    """FLOPs of RMSNorm's backward: as :func:`norm_backward_flops` with x_hat = x * r and no mean.

    grad_input = r * (g*gamma - x_hat * mean(g*gamma*x_hat)): x_hat 1, g*gamma 1 (none without
    weight), mean(g*gamma*x_hat) 2, x_hat * b 1, a subtraction 1, * r 1: 7 per element, 6 without
    weight. grad_weight = sum(g * x_hat): 2, plus 1 for x_hat when grad_input did not compute it.
    """
    grad_input, grad_weight = output_mask
    flops = 0
    if grad_input:
        flops += 1 + weight + 2 + 1 + 1 + 1
    if grad_weight:
        flops += 2 if grad_input else 2 + 1
    return numel * flops


def layer_norm_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask)
    x, weight, mask = args[1], arg(args, kwargs, 5, "weight"), arg(args, kwargs, 7, "output_mask")
    return Counts.elementwise(flops=norm_backward_flops(x.numel(), mask, weight is not None))


def group_norm_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # native_group_norm_backward(grad_out, input, mean, rstd, weight, N, C, HxW, group, output_mask)
    x, weight, mask = args[1], arg(args, kwargs, 4, "weight"), arg(args, kwargs, 9, "output_mask")
    return Counts.elementwise(flops=norm_backward_flops(x.numel(), mask, weight is not None))


_register(layer_norm_backward_counts, "native_layer_norm_backward")
_register(group_norm_backward_counts, "native_group_norm_backward")


def batch_norm_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # native_batch_norm_backward(grad_out, input, weight, running_mean, running_var, save_mean,
    # save_invstd, train, eps, output_mask); batch_norm_backward has `update` for train and a
    # trailing reserve. Statistics come from the batch in training or without running statistics.
    x, weight, mask = args[1], arg(args, kwargs, 2, "weight"), arg(args, kwargs, 9, "output_mask")
    train = arg(args, kwargs, 7, "train", None)
    train = arg(args, kwargs, 7, "update") if train is None else train
    batch_stats = bool(train) or arg(args, kwargs, 3, "running_mean") is None
    return Counts.elementwise(flops=norm_backward_flops(x.numel(), mask, weight is not None, batch_stats))


_register(batch_norm_backward_counts, "native_batch_norm_backward", "batch_norm_backward")


def cudnn_batch_norm_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # cudnn_batch_norm_backward(input, grad_output, weight, ...): training only, all three gradients
    return Counts.elementwise(flops=norm_backward_flops(args[0].numel(), (True, True, True), True))


_register(cudnn_batch_norm_backward_counts, "cudnn_batch_norm_backward", "miopen_batch_norm_backward")


def rms_norm_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _fused_rms_norm_backward(grad_out, input, normalized_shape, rstd, weight, output_mask)
    x, weight, mask = args[1], arg(args, kwargs, 4, "weight"), arg(args, kwargs, 5, "output_mask")
    return Counts.elementwise(flops=rms_norm_backward_flops(x.numel(), mask, weight is not None))


_register(rms_norm_backward_counts, "_fused_rms_norm_backward")


def _per_dim(value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ndim
    return tuple(value) * ndim if len(value) == 1 else tuple(value)


def _window_pairs(output_shape: Sequence[int], sums: Sequence[int]) -> int:
    # (output, input) pairs over all windows; windows factor per spatial dimension
    ndim = len(sums)
    out_spatial = prod(output_shape[len(output_shape) - ndim:])
    planes = prod(output_shape) // out_spatial if out_spatial else 0
    return planes * prod(sums)


def avg_pool_backward_counts(ndim: int) -> Callable[[tuple, dict, Any], Counts]:
    """A rule for ``avg_pool{ndim}d_backward``: one division per output gradient and one add per
    (output, input) pair of its window, windows clipped to the input as the forward's are."""

    def rule(args: tuple, kwargs: dict, out) -> Counts:
        # avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, ...):
        # grad_in[i] += g[o] / divisor(o) for each input i in window o
        grad_output, x = args[0], args[1]
        kernel = _per_dim(arg(args, kwargs, 2, "kernel_size"), ndim)
        stride = arg(args, kwargs, 3, "stride")
        strides = _per_dim(stride, ndim) if stride else kernel
        padding = _per_dim(arg(args, kwargs, 4, "padding"), ndim)
        dims = zip(x.shape[-ndim:], grad_output.shape[-ndim:], kernel, strides, padding)
        sums = [pool_window_sum(*d) for d in dims]
        return Counts.elementwise(flops=_window_pairs(grad_output.shape, sums) + grad_output.numel())

    rule.__name__ = rule.__qualname__ = f"avg_pool{ndim}d_backward_counts"
    return rule


def adaptive_avg_pool_backward_counts(ndim: int) -> Callable[[tuple, dict, Any], Counts]:
    """A rule for ``_adaptive_avg_pool{ndim}d_backward``, counted as :func:`avg_pool_backward_counts`."""

    def rule(args: tuple, kwargs: dict, out) -> Counts:
        # _adaptive_avg_pool2d_backward(grad_output, self)
        grad_output, x = args[0], args[1]
        sums = [adaptive_window_sum(i, o) for i, o in zip(x.shape[-ndim:], grad_output.shape[-ndim:])]
        return Counts.elementwise(flops=_window_pairs(grad_output.shape, sums) + grad_output.numel())

    rule.__name__ = rule.__qualname__ = f"adaptive_avg_pool{ndim}d_backward_counts"
    return rule


for _ndim in (2, 3):
    _register(avg_pool_backward_counts(_ndim), f"avg_pool{_ndim}d_backward")
    _register(adaptive_avg_pool_backward_counts(_ndim), f"_adaptive_avg_pool{_ndim}d_backward")


# FLOPs per element of grad_output: each output's gradient goes to the inputs it was interpolated
# from, times the tap's weight (the product of its 1-D weights, which are per row and column and
# not counted), added there: nearest 1 tap (an add), linear 2 taps (a product and an add),
# bilinear 4 taps (2 products and an add), trilinear 8 (3 products and an add), bicubic 16 (2 and 1)
INTERPOLATION_BACKWARD_FLOPS: dict[str, int] = {
    "nearest": 1,
    "linear": 2 * 2,
    "bilinear": 4 * 3,
    "trilinear": 8 * 4,
    "bicubic": 16 * 3,
}


def upsample_backward_counts(mode: str) -> Callable[[tuple, dict, Any], Counts]:
    """A rule for the backward of ``mode`` interpolation (grad_output, output_size, input_size, ...)."""
    flops = INTERPOLATION_BACKWARD_FLOPS[mode]

    def rule(args: tuple, kwargs: dict, out) -> Counts:
        return Counts.elementwise(flops=flops * args[0].numel())

    rule.__name__ = rule.__qualname__ = f"upsample_{mode}_backward_counts"
    return rule


for _mode, _names in {
    "nearest": ("upsample_nearest1d_backward", "upsample_nearest2d_backward", "upsample_nearest3d_backward",
                "_upsample_nearest_exact1d_backward", "_upsample_nearest_exact2d_backward",
                "_upsample_nearest_exact3d_backward"),
    "linear": ("upsample_linear1d_backward",),
    "bilinear": ("upsample_bilinear2d_backward",),
    "trilinear": ("upsample_trilinear3d_backward",),
    "bicubic": ("upsample_bicubic2d_backward",),
}.items():
    _register(upsample_backward_counts(_mode), *_names)


def accumulate_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # grad_in[j(i)] += grad[i]: one add per element of the first argument, the values accumulated
    return Counts.elementwise(flops=args[0].numel())


_register(
    accumulate_backward_counts,
    # reflection and replication padding: border gradients add into the elements they copied
    "reflection_pad1d_backward", "reflection_pad2d_backward", "reflection_pad3d_backward",
    "replication_pad1d_backward", "replication_pad2d_backward", "replication_pad3d_backward",
    # Tensor.unfold's windows and F.fold's (col2im, also F.unfold's backward) patches overlap
    "unfold_backward", "col2im",
    # zeros.index_add_(dim, index, grad): as its decomposition (index_add) counts in eager
    "index_select_backward",
)


def embedding_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # embedding_dense_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
    # grad_weight[indices[i]] += g[i], one add per element of grad_output, and a division by the
    # index's count with scale_grad_by_freq (which rows share an index is data: all rows count)
    scale_grad_by_freq = arg(args, kwargs, 4, "scale_grad_by_freq", False)
    return Counts.elementwise(flops=(1 + bool(scale_grad_by_freq)) * args[0].numel())


_register(embedding_backward_counts, "embedding_dense_backward")


def _embedding_bag_flops(grad, indices, mode: int, scale_grad_by_freq: bool, per_sample_weights) -> int:
    # grad_weight[indices[i]] += scale_i * grad[bag(i)]: per index, one add per element of the row and
    # a product where the row is scaled (mode mean by 1 / bag size, per-sample weights,
    # scale_grad_by_freq); mode max (2) routes each bag's gradient to its argmax: free, as max pooling
    if mode == 2:
        return 0
    scaled = mode == 1 or per_sample_weights is not None or bool(scale_grad_by_freq)
    return indices.numel() * grad.shape[-1] * (1 + scaled)


def embedding_bag_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _embedding_bag_backward(grad, indices, offsets, offset2bag, bag_size, maximum_indices,
    # num_weights, scale_grad_by_freq, mode, sparse, per_sample_weights, padding_idx)
    return Counts.elementwise(flops=_embedding_bag_flops(
        args[0], args[1], arg(args, kwargs, 8, "mode"), arg(args, kwargs, 7, "scale_grad_by_freq"),
        arg(args, kwargs, 10, "per_sample_weights", None),
    ))


def embedding_bag_dense_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _embedding_bag_dense_backward(grad, indices, offset2bag, bag_size, maximum_indices,
    # num_weights, scale_grad_by_freq, mode, per_sample_weights, padding_idx)
    return Counts.elementwise(flops=_embedding_bag_flops(
        args[0], args[1], arg(args, kwargs, 7, "mode"), arg(args, kwargs, 6, "scale_grad_by_freq"),
        arg(args, kwargs, 8, "per_sample_weights", None),
    ))


def embedding_bag_per_sample_weights_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _embedding_bag_per_sample_weights_backward(grad, weight, indices, ...): per index the dot
    # product of its bag's gradient row and its weight row, D products and D adds
    grad, indices = args[0], args[2]
    return Counts.elementwise(flops=indices.numel() * 2 * grad.shape[-1])


_register(embedding_bag_backward_counts, "_embedding_bag_backward")
_register(embedding_bag_dense_backward_counts, "_embedding_bag_dense_backward")
_register(embedding_bag_per_sample_weights_backward_counts, "_embedding_bag_per_sample_weights_backward")


def nll_loss_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # nll_loss_backward(grad_output, self, target, weight, reduction, ignore_index, total_weight):
    # grad_input[i, target[i]] = -weight[target[i]] * g / total_weight, one per target element
    return Counts.elementwise(flops=args[2].numel())


_register(nll_loss_backward_counts, "nll_loss_backward", "nll_loss2d_backward")


# FLOPs per element of the input of the losses' backwards (grad_output, self, target, ...), with
# c = g / N (g / 1 without reduction) and d = x - t
LOSS_BACKWARD_FLOPS_PER_ELEMENT: dict[str, int] = {
    "mse_loss_backward": 2,  # 2c * d: d and a product
    "smooth_l1_loss_backward": 2,  # c * d / beta where |d| < beta, c * sign(d) outside
    "huber_loss_backward": 2,  # c * d where |d| <= delta, c * delta * sign(d) outside
    "soft_margin_loss_backward": 6,  # -y * c * z / (1 + z), z = exp(-y * x): y * x, exp, +, /, *, *
}


for _name, _flops in LOSS_BACKWARD_FLOPS_PER_ELEMENT.items():
    _register(per_element_counts(_name, _flops, argument=1), _name)


def binary_cross_entropy_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # binary_cross_entropy_backward(grad_output, self, target, weight, reduction):
    # c * (x - t) / max(x * (1 - x), eps): x - t, 1 - x, a product, a division, * c; * weight
    weight = arg(args, kwargs, 3, "weight", None)
    return Counts.elementwise(flops=(5 + (weight is not None)) * args[1].numel())


_register(binary_cross_entropy_backward_counts, "binary_cross_entropy_backward")


def attention_backward_counts(heads_x_queries: int, kv_len: int, qk_dim: int, v_dim: int) -> Counts:
    """The backward of ``hooks.rules.attention.attention_counts``: its matmuls twice over and
    5 FLOPs per score, as the eager attention's backward computes them."""
    # forward: s = q k^T * scale, p = softmax(s), out = p v, per query row against kv_len keys
    # dp = g v^T and dv = p^T g: L x S x Ev MACs each; ds = scale * p * (dp - sum(dp * p)): the
    # softmax's backward (4 per score) and the scale's (1); dq = ds k and dk = ds^T q: L x S x E each
    scores = heads_x_queries * kv_len
    matmul = Counts.matmul(2 * scores * (qk_dim + v_dim))
    return matmul + Counts.elementwise(flops=scores * (SOFTMAX_BACKWARD_FLOPS + 1))


def sdpa_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _scaled_dot_product_*_backward(grad_out, query, key, value, ...): q [*, Hq, L, E],
    # k [*, Hkv, S, E], v [*, Hkv, S, Ev]; with GQA (Hkv < Hq) each query head's products count
    # (the sums over a group of query heads are the matmuls' own accumulation)
    query, key, value = (arg(args, kwargs, i, n) for i, n in ((1, "query"), (2, "key"), (3, "value")))
    rows = query.numel() // query.shape[-1]
    return attention_backward_counts(rows, key.shape[-2], query.shape[-1], value.shape[-1])


# SDPA's fused kernels' backwards; FlopCounterMode's formula would count the scores they recompute
_register(
    sdpa_backward_counts,
    "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def weight_norm_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _weight_norm_interface_backward(grad_w, saved_v, saved_g, saved_norms, dim); w = g * v / |v|:
    # grad_g = sum(grad_w * v) / |v| 2 per element of v; grad_v = (g / |v|) * (grad_w - v * grad_g / |v|)
    # 3 per element (v * s, the subtraction, the product); per-row scalars are not counted
    return Counts.elementwise(flops=5 * args[1].numel())


_register(weight_norm_backward_counts, "_weight_norm_interface_backward")


def put_counts(args: tuple, kwargs: dict, out) -> Counts:
    # put(self, index, source, accumulate): Tensor.take's backward with accumulate=True, one add
    # per element of source; without accumulate a scatter, free
    accumulate = arg(args, kwargs, 3, "accumulate", False)
    return Counts.elementwise(flops=args[2].numel() if accumulate else 0)


_register(put_counts, "put")


# per hidden unit and step of an LSTM cell's backward, with s(x) = x(1 - x) and t = tanh(c'):
# dh = g_out + dh_next 1; t 1; d_o = dh * t * s(o) 4; dc = dh * o * (1 - t²) + dc_next 5;
# d_i = dc * g * s(i) 4; d_f = dc * c * s(f) 4; d_g = dc * i * (1 - g²) 4; dc_prev = dc * f 1
LSTM_BACKWARD_FLOPS_PER_UNIT = 24


def mkldnn_rnn_layer_backward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # mkldnn_rnn_layer_backward(input, w_ih [4H, in], w_hh [4H, H], b_ih, b_hh, hx, cx, output, hy,
    # cy, grad_output, grad_hy, grad_cy, reverse, mode, hidden_size, num_layers, has_biases, ...):
    # one direction of one layer over T·B steps (input [T, B, in], [B, T, in] or packed [N, in]).
    # From the gates' gradient dG: dx = dG·W_ih, dW_ih = dGᵀ·x, dh = dG·W_hh, dW_hh = dGᵀ·h, twice
    # the forward's matmul MACs; the bias gradient sums dG, 1 add per gate value (b_hh's is the same)
    x, w_ih, w_hh = args[0], args[1], args[2]
    steps = x.numel() // x.shape[-1] if x.dim() else 0
    gates, hidden = w_ih.shape[0], w_hh.shape[1]
    bias = steps * gates if arg(args, kwargs, 17, "has_biases", True) else 0
    return Counts.matmul(2 * steps * gates * (x.shape[-1] + hidden)) + Counts.elementwise(
        flops=steps * hidden * LSTM_BACKWARD_FLOPS_PER_UNIT + bias)


_register(mkldnn_rnn_layer_backward_counts, "mkldnn_rnn_layer_backward")
