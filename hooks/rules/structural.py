"""Layers that move, copy or drop data and do no floating-point work: 0 MACs, 0 FLOPs by decision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import free_functions, free_modules, function_rule, module_rule
from hooks.rules.common import arg

__all__ = ["embedding_bag_counts", "embedding_bag_function_counts", "embedding_bag_operator_counts"]

free_modules(
    nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.Embedding,
)


@module_rule(nn.EmbeddingBag)
def embedding_bag_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # [B, dim] = embedding_bag(indices [n] or [B, L]); one add per gathered element for
    # mode "sum" and "mean", plus a division per output element for "mean"; "max" compares only
    weighted = len(inputs) > 2 and inputs[2] is not None
    return Counts.elementwise(flops=_bag_flops(inputs[0].numel() * module.embedding_dim, module.mode, weighted,
                                               output.numel()))


def _bag_flops(gathered: int, mode: str, weighted: bool, out_numel: int) -> int:
    if mode == "max":
        return 0
    return gathered * (2 if weighted else 1) + (out_numel if mode == "mean" else 0)


@function_rule(F.embedding_bag)
def embedding_bag_function_counts(args: tuple, kwargs: dict, out) -> Counts:
    # F.embedding_bag(input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
    # per_sample_weights, ...): as nn.EmbeddingBag
    indices, weight = args[0], args[1]
    mode, weights = arg(args, kwargs, 6, "mode", "mean"), arg(args, kwargs, 8, "per_sample_weights")
    return Counts.elementwise(flops=_bag_flops(indices.numel() * weight.shape[-1], mode, weights is not None, out.numel()))


@function_rule(torch.ops.aten._embedding_bag, torch.ops.aten._embedding_bag_forward_only)
def embedding_bag_operator_counts(args: tuple, kwargs: dict, out) -> Counts:
    # _embedding_bag(weight, indices, offsets, scale_grad_by_freq, mode (0 sum, 1 mean, 2 max), sparse,
    # per_sample_weights, ...) -> (output, offset2bag, bag_size, max_indices): as nn.EmbeddingBag
    weight, indices = args[0], args[1]
    mode = ("sum", "mean", "max")[arg(args, kwargs, 4, "mode", 0)]
    weights = arg(args, kwargs, 6, "per_sample_weights")
    return Counts.elementwise(flops=_bag_flops(indices.numel() * weight.shape[-1], mode, weights is not None,
                                               out[0].numel()))


def _existing(*names: str) -> list:
    """``torch.<name>``, ``torch.Tensor.<name>`` and ``F.<name>`` (and in-place forms) that exist."""
    found = []
    for name in names:
        for owner in (torch, torch.Tensor, F):
            for variant in (name, f"{name}_"):
                f = getattr(owner, variant, None)
                if callable(f) and f not in found:
                    found.append(f)
    return found


# Views, copies, casts, indexing, creation and selection: data movement, no arithmetic.
free_functions(
    *_existing(
        "view", "view_as", "reshape", "reshape_as", "transpose", "swapaxes", "swapdims", "t", "permute",
        "movedim", "moveaxis", "contiguous", "expand", "expand_as", "broadcast_to", "repeat",
        "repeat_interleave", "tile", "squeeze", "unsqueeze", "flatten", "unflatten", "ravel", "narrow",
        "select", "index_select", "gather", "take", "take_along_dim", "chunk", "split", "tensor_split",
        "split_with_sizes", "unbind", "cat", "concat", "concatenate", "stack", "hstack", "vstack",
        "dstack", "flip", "roll", "diagonal", "diag", "diag_embed", "tril", "triu", "as_strided",
        "unfold", "masked_fill", "masked_select", "masked_scatter", "index_fill", "index_copy",
        "index_put", "scatter", "where", "clamp", "clip", "abs", "neg", "negative", "sign", "maximum",
        "minimum", "max", "min", "amax", "amin", "aminmax", "sort", "topk", "msort", "floor", "ceil",
        "round", "trunc", "nan_to_num", "to", "type", "type_as", "float", "double", "half", "bfloat16",
        "long", "int", "short", "bool", "byte", "char",
        "cpu", "cuda", "clone", "detach", "copy_", "fill", "zero", "zeros", "zeros_like", "ones",
        "ones_like", "full", "full_like", "empty", "empty_like", "new_zeros", "new_ones", "new_full",
        "new_empty", "new_tensor", "tensor", "as_tensor", "arange", "linspace", "rand", "rand_like",
        "randn", "randn_like", "requires_grad", "pad", "dropout", "dropout1d", "dropout2d",
        "dropout3d", "alpha_dropout", "feature_alpha_dropout", "embedding", "pixel_shuffle",
        "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "histc", "bincount",
        "_pack_padded_sequence", "_pad_packed_sequence",
        "eye", "broadcast_tensors", "meshgrid", "atleast_1d", "atleast_2d", "atleast_3d", "block_diag",
        "cartesian_prod", "combinations", "empty_strided", "randint", "randint_like", "randperm", "normal",
        "bernoulli", "multinomial", "scalar_tensor", "tensor_split", "hsplit", "vsplit", "dsplit",
        "column_stack", "row_stack", "fliplr", "flipud", "rot90", "argmax", "argmin", "argsort",
        "count_nonzero", "nonzero", "unique", "unique_consecutive", "searchsorted", "bucketize",
        "eq", "ne", "lt", "le", "gt", "ge", "greater", "less", "equal", "isclose", "allclose",
        "isnan", "isinf", "isfinite", "logical_and", "logical_or", "logical_not", "logical_xor",
        "any", "all", "one_hot",
        # metadata: no data is touched at all
        "size", "dim", "ndimension", "numel", "nelement", "element_size", "stride", "storage_offset",
        "is_contiguous", "is_floating_point", "is_complex", "item", "tolist", "data_ptr", "get_device",
    ),
    *(getattr(torch.Tensor, name).__get__ for name in (
        "shape", "dtype", "device", "ndim", "is_cuda", "is_meta", "is_sparse", "layout", "requires_grad", "grad",
        "names", "is_quantized",
    ) if hasattr(getattr(torch.Tensor, name, None), "__get__")),
    # printing and converting a tensor: formatting reads values, it is not the model's arithmetic
    torch.Tensor.__repr__, torch.Tensor.__str__, torch.Tensor.__format__, torch.Tensor.numpy, torch.Tensor.__array__,
    torch.Tensor.__len__, torch.Tensor.__bool__, torch.Tensor.__eq__, torch.Tensor.__ne__, torch.Tensor.__lt__,
    torch.Tensor.__le__, torch.Tensor.__gt__, torch.Tensor.__ge__, torch.Tensor.__invert__,
    torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.T.__get__, torch.Tensor.mT.__get__,
    torch.Tensor.H.__get__, torch.Tensor.mH.__get__, torch.Tensor.data.__get__, torch.Tensor.real.__get__,
    torch.Tensor.__neg__, torch.Tensor.__abs__,
)
