"""Attention: ``nn.MultiheadAttention`` as one module rule, and its functional forms.

MACs per call: the q/k/v input projections, the scores ``q @ k^T`` (L x S x head_dim per head),
the weighted sum ``attn @ v`` (L x S x head_dim per head) and the output projection. FLOPs add one
multiply per score for the scaling and the softmax over each row of S scores (3S - 1 each). A causal or padding mask changes nothing: the
kernels compute (or, for fused ones, are charged for) the full L x S score matrix, as
FlopCounterMode counts them. The count does not depend on which kernel PyTorch picks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hooks.counts import Counts
from hooks.registry import function_rule, module_rule
from hooks.rules.activation import softmax_flops
from hooks.rules.common import arg

__all__ = ["attention_counts", "mha_counts", "multihead_attention_counts", "sdpa_counts", "flex_attention_counts"]


def attention_counts(heads_x_queries: int, kv_len: int, qk_dim: int, v_dim: int) -> Counts:
    """Scores, their scaling and softmax, and the weighted sum, for ``heads_x_queries`` query rows
    against ``kv_len`` keys."""
    # scores [*, L, S] = q [*, L, E] @ k^T [*, E, S] * scale; out [*, L, Ev] = attn [*, L, S] @ v [*, S, Ev]
    scores = heads_x_queries * kv_len
    matmul = Counts.matmul(scores * (qk_dim + v_dim))
    return matmul + Counts.elementwise(flops=scores + softmax_flops(scores, kv_len))


def mha_counts(
    batch: int, q_len: int, kv_len: int, embed_dim: int, num_heads: int, kdim: int, vdim: int,
    extra_keys: int = 0, project_k: bool = True, project_v: bool = True,
) -> Counts:
    """Projections and attention of one ``multi_head_attention_forward`` call."""
    # q [B, L, E] -> [B, H, L, E/H]; k [B, S, kdim], v [B, S, vdim] -> [B, H, S, E/H]; out proj E -> E
    e = embed_dim
    projections = batch * q_len * e * e * 2  # q and the output projection
    projections += batch * kv_len * kdim * e if project_k else 0
    projections += batch * kv_len * vdim * e if project_v else 0
    head_dim = e // num_heads
    return Counts.matmul(projections) + attention_counts(
        batch * num_heads * q_len, kv_len + extra_keys, head_dim, head_dim
    )


def _batch_and_length(x, batch_first: bool) -> tuple[int, int]:
    if x.dim() == 2:  # unbatched [L, E]
        return 1, x.shape[0]
    return (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])


@module_rule(nn.MultiheadAttention)
def multihead_attention_counts(module: nn.Module, inputs: tuple, output) -> Counts:
    # query [L, N, E] (batch_first: [N, L, E]), key [S, N, kdim], value [S, N, vdim]
    query, key = inputs[0], inputs[1]
    batch, q_len = _batch_and_length(query, module.batch_first)
    _, kv_len = _batch_and_length(key, module.batch_first)
    extra = (module.bias_k is not None) + bool(module.add_zero_attn)
    return mha_counts(batch, q_len, kv_len, module.embed_dim, module.num_heads, module.kdim, module.vdim, extra)


@function_rule(F.multi_head_attention_forward)
def multi_head_attention_forward_counts(args: tuple, kwargs: dict, out) -> Counts:
    # query [L, N, E] or [L, E]; key [S, N, kdim]; static_k / static_v come already projected
    query, key, value = args[0], args[1], args[2]
    batch, q_len = _batch_and_length(query, batch_first=False)
    _, kv_len = _batch_and_length(key, batch_first=False)
    extra = (arg(args, kwargs, 7, "bias_k", None) is not None) + bool(arg(args, kwargs, 9, "add_zero_attn", False))
    return mha_counts(
        batch, q_len, kv_len, arg(args, kwargs, 3, "embed_dim_to_check"), arg(args, kwargs, 4, "num_heads"),
        key.shape[-1], value.shape[-1], extra,
        project_k=arg(args, kwargs, 21, "static_k", None) is None,
        project_v=arg(args, kwargs, 22, "static_v", None) is None,
    )


@function_rule(F.scaled_dot_product_attention)
def sdpa_counts(args: tuple, kwargs: dict, out) -> Counts:
    # q [*, Hq, L, E], k [*, Hkv, S, E], v [*, Hkv, S, Ev] -> [*, Hq, L, Ev]; GQA shares k/v heads
    query, key, value = (arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    rows = query.numel() // query.shape[-1]
    return attention_counts(rows, key.shape[-2], query.shape[-1], value.shape[-1])


# SDPA's fused kernels, seen at the aten level (a scripted model, an exported graph): their
# arguments start (query, key, value) in SDPA's [*, H, L, E] layout, so they count as the function
_SDPA_KERNELS = [
    getattr(torch.ops.aten, name) for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
    ) if hasattr(torch.ops.aten, name)
]
if _SDPA_KERNELS:
    function_rule(*_SDPA_KERNELS)(sdpa_counts)


def flex_attention_counts(args: tuple, kwargs: dict, out) -> Counts:
    # flex_attention's operator (query, key, value, score_mod, block_mask, ...): as SDPA, the full
    # L x S score matrix; what score_mod computes per score and the blocks a mask skips are not seen
    query, key, value = args[0], args[1], args[2]
    rows = query.numel() // query.shape[-1]
    return attention_counts(rows, key.shape[-2], query.shape[-1], value.shape[-1])


# torch.nn.attention.flex_attention calls this higher-order operator (torch >= 2.5)
_FLEX = getattr(torch._higher_order_ops, "flex_attention", None)
if isinstance(_FLEX, torch._ops.HigherOrderOperator):
    function_rule(_FLEX)(flex_attention_counts)
