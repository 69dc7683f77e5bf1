"""Torch functions called inside forwards, and nn.MultiheadAttention: exact counts as closed forms.

Every matmul-like case is checked twice: against its closed form, and against
``torch.utils.flop_counter.FlopCounterMode`` (FCM) on the same module. FCM has formulas only for
``mm``/``addmm``/``bmm``/``baddbmm``/conv/attention kernels; for the products it does not count
(``mv``, ``addmv``, ``dot``, ``addbmm``, matmul with a 1-D right operand) the oracle runs the
same product written with ``mm``/``bmm``, named in the case.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from conftest import Call, assert_tree_invariant, counted, flop_counter_flops
from torch import nn

from hooks import REGISTRY, capture_forward
from profiler import UncountedWarning, profile


def randn(*shapes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shape, generator=gen) for shape in shapes)


def short_name(function: str) -> str:
    """``torch.Tensor.matmul`` -> ``matmul``."""
    return function.rpartition(".")[2]


# --------------------------------------------------------------------------- nn.MultiheadAttention


class MHACall(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention, **call_kwargs) -> None:
        super().__init__()
        self.mha = mha
        self.call_kwargs = call_kwargs

    def forward(self, query, key, value):
        return self.mha(query, key, value, **self.call_kwargs)


# (module kwargs, query shape, key/value leading shape, call kwargs, MACs, softmax and scaling FLOPs).
# MACs: q and out projections (E x E each), k and v projections (kdim x E, vdim x E), scores and
# weighted sum (head_dim each per query, key and head); softmax: 3S - 1 FLOPs per row of S scores;
# scaling: 1 per score.
MHA_CASES = [
    pytest.param(dict(), (7, 2, 16), (7, 2), {},
                 2 * 7 * 16 * 16 * 2 + 2 * 7 * (16 + 16) * 16 + 2 * 4 * 7 * 7 * 4 * 2,
                 2 * 4 * 7 * (3 * 7 - 1) + 2 * 4 * 7 * 7, id="self-attention"),
    pytest.param(dict(kdim=8, vdim=12), (7, 2, 16), (5, 2), {},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (8 + 12) * 16 + 2 * 4 * 7 * 5 * 4 * 2,
                 2 * 4 * 7 * (3 * 5 - 1) + 2 * 4 * 7 * 5, id="kdim-vdim"),
    pytest.param(dict(batch_first=True), (2, 7, 16), (2, 5), {},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * 5 * 4 * 2,
                 2 * 4 * 7 * (3 * 5 - 1) + 2 * 4 * 7 * 5, id="batch-first-need-weights"),
    pytest.param(dict(batch_first=True), (2, 7, 16), (2, 5), {"need_weights": False},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * 5 * 4 * 2,
                 2 * 4 * 7 * (3 * 5 - 1) + 2 * 4 * 7 * 5, id="batch-first-no-weights"),
    pytest.param(dict(), (7, 2, 16), (5, 2), {"need_weights": False},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * 5 * 4 * 2,
                 2 * 4 * 7 * (3 * 5 - 1) + 2 * 4 * 7 * 5, id="seq-first-no-weights"),
    pytest.param(dict(), (7, 2, 16), (5, 2), {"average_attn_weights": False},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * 5 * 4 * 2,
                 2 * 4 * 7 * (3 * 5 - 1) + 2 * 4 * 7 * 5, id="per-head-weights"),
    pytest.param(dict(add_bias_kv=True), (7, 2, 16), (5, 2), {},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * (5 + 1) * 4 * 2,
                 2 * 4 * 7 * (3 * (5 + 1) - 1) + 2 * 4 * 7 * (5 + 1), id="add-bias-kv"),
    pytest.param(dict(add_zero_attn=True), (7, 2, 16), (5, 2), {},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * (5 + 1) * 4 * 2,
                 2 * 4 * 7 * (3 * (5 + 1) - 1) + 2 * 4 * 7 * (5 + 1), id="add-zero-attn"),
    pytest.param(dict(add_bias_kv=True, add_zero_attn=True), (7, 2, 16), (5, 2), {},
                 2 * 7 * 16 * 16 * 2 + 2 * 5 * (16 + 16) * 16 + 2 * 4 * 7 * (5 + 2) * 4 * 2,
                 2 * 4 * 7 * (3 * (5 + 2) - 1) + 2 * 4 * 7 * (5 + 2), id="bias-kv-and-zero-attn"),
    pytest.param(dict(), (7, 16), (5,), {},
                 1 * 7 * 16 * 16 * 2 + 1 * 5 * (16 + 16) * 16 + 1 * 4 * 7 * 5 * 4 * 2,
                 1 * 4 * 7 * (3 * 5 - 1) + 1 * 4 * 7 * 5, id="unbatched"),
    pytest.param(dict(kdim=8, vdim=12), (7, 16), (5,), {"need_weights": False},
                 1 * 7 * 16 * 16 * 2 + 1 * 5 * (8 + 12) * 16 + 1 * 4 * 7 * 5 * 4 * 2,
                 1 * 4 * 7 * (3 * 5 - 1) + 1 * 4 * 7 * 5, id="unbatched-kdim-no-weights"),
]


@pytest.mark.parametrize(("module_kwargs", "query_shape", "kv_lead", "call_kwargs", "macs", "attention_flops"), MHA_CASES)
def test_multihead_attention_closed_form(module_kwargs, query_shape, kv_lead, call_kwargs, macs, attention_flops):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, **module_kwargs)
    query, key, value = randn(query_shape, (*kv_lead, mha.kdim), (*kv_lead, mha.vdim))
    model = MHACall(mha, **call_kwargs)

    result = counted(model, (query, key, value))

    assert result.total_macs == macs
    assert result.matmul_flops == 2 * macs
    assert result.total_flops == 2 * macs + attention_flops
    assert result.layer("mha").functions == ()  # its rule covers the F.linear/bmm calls inside
    assert result.matmul_flops == flop_counter_flops(model, (query, key, value))


def _padding_mask() -> torch.Tensor:
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    return mask


@pytest.mark.parametrize("call_kwargs", [
    pytest.param({}, id="no-mask"),
    pytest.param({"key_padding_mask": _padding_mask()}, id="key-padding-mask"),
    pytest.param({"attn_mask": torch.ones(7, 7, dtype=torch.bool).triu(1)}, id="bool-attn-mask"),
    pytest.param({"attn_mask": nn.Transformer.generate_square_subsequent_mask(7)}, id="float-attn-mask"),
    pytest.param({"attn_mask": nn.Transformer.generate_square_subsequent_mask(7), "is_causal": True}, id="is-causal"),
    pytest.param({"key_padding_mask": _padding_mask(), "need_weights": False}, id="padding-mask-no-weights"),
])
def test_multihead_attention_masks_change_nothing(call_kwargs):
    torch.manual_seed(0)
    model = MHACall(nn.MultiheadAttention(16, 4, batch_first=True), **call_kwargs)
    (x,) = randn((2, 7, 16))

    result = counted(model, (x, x, x))

    macs = 2 * 7 * 16 * 16 * 2 + 2 * 7 * (16 + 16) * 16 + 2 * 4 * 7 * 7 * 4 * 2
    assert result.total_macs == macs
    assert result.total_flops == 2 * macs + 2 * 4 * 7 * (3 * 7 - 1) + 2 * 4 * 7 * 7  # softmax, scaling
    assert result.matmul_flops == flop_counter_flops(model, (x, x, x))


def test_multihead_attention_fast_path_is_counted():
    """No grad, eval, batch_first, self-attention: PyTorch's fused fast path still counts in full."""
    torch.manual_seed(0)
    model = MHACall(nn.MultiheadAttention(16, 4, batch_first=True)).eval()
    (x,) = randn((2, 7, 16))
    with torch.no_grad():
        result = counted(model, (x, x, x))
    assert result.total_macs == 2 * 7 * 16 * 16 * 2 + 2 * 7 * (16 + 16) * 16 + 2 * 4 * 7 * 7 * 4 * 2


# --------------------------------------------------------------------------- scaled_dot_product_attention

sdpa = F.scaled_dot_product_attention


def sdpa_flops(macs: int, rows: int, kv_len: int) -> int:
    """2 per MAC, softmax (3S - 1 per row of S scores) and scaling each score (1 per score)."""
    return 2 * macs + rows * (3 * kv_len - 1) + rows * kv_len


# (fn, q/k/v shapes, MACs = B * Hq * L * S * (E + Ev), query rows B * Hq * L, kv length S)
SDPA_CASES = [
    pytest.param(sdpa, [(2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8)], 2 * 3 * 7 * 7 * (8 + 8), 2 * 3 * 7, 7,
                 id="batch-and-heads"),
    pytest.param(sdpa, [(2, 3, 7, 8), (2, 3, 5, 8), (2, 3, 5, 6)], 2 * 3 * 7 * 5 * (8 + 6), 2 * 3 * 7, 5,
                 id="q-len-ne-kv-len-and-ev"),
    pytest.param(sdpa, [(3, 7, 8), (3, 5, 8), (3, 5, 8)], 3 * 7 * 5 * (8 + 8), 3 * 7, 5, id="no-head-dim"),
    pytest.param(sdpa, [(2, 2, 3, 7, 8), (2, 2, 3, 5, 8), (2, 2, 3, 5, 8)], 2 * 2 * 3 * 7 * 5 * (8 + 8),
                 2 * 2 * 3 * 7, 5, id="two-batch-dims"),
    pytest.param(lambda q, k, v: sdpa(q, k, v, enable_gqa=True), [(2, 6, 7, 8), (2, 2, 5, 8), (2, 2, 5, 8)],
                 2 * 6 * 7 * 5 * (8 + 8), 2 * 6 * 7, 5, id="gqa"),
    pytest.param(lambda q, k, v: sdpa(q, k, v, is_causal=True), [(2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8)],
                 2 * 3 * 7 * 7 * (8 + 8), 2 * 3 * 7, 7, id="is-causal"),
    pytest.param(lambda q, k, v: sdpa(q, k, v, attn_mask=torch.ones(7, 5, dtype=torch.bool).tril()),
                 [(2, 3, 7, 8), (2, 3, 5, 8), (2, 3, 5, 8)], 2 * 3 * 7 * 5 * (8 + 8), 2 * 3 * 7, 5,
                 id="bool-mask"),
    pytest.param(lambda q, k, v: sdpa(query=q, key=k, value=v, scale=0.5),
                 [(2, 3, 7, 8), (2, 3, 5, 8), (2, 3, 5, 8)], 2 * 3 * 7 * 5 * (8 + 8), 2 * 3 * 7, 5,
                 id="keyword-arguments"),
]


@pytest.mark.parametrize(("fn", "shapes", "macs", "rows", "kv_len"), SDPA_CASES)
def test_sdpa_closed_form(fn, shapes, macs, rows, kv_len):
    model = Call(fn)
    inputs = randn(*shapes)

    result = counted(model, inputs)

    assert result.total_macs == macs
    assert result.matmul_flops == 2 * macs
    assert result.total_flops == sdpa_flops(macs, rows, kv_len)
    [stat] = result.root.functions
    assert (short_name(stat.function), stat.calls) == ("scaled_dot_product_attention", 1)
    assert result.matmul_flops == flop_counter_flops(model, inputs)


def test_sdpa_causal_mask_counts_the_full_score_matrix():
    model_causal = Call(lambda q, k, v: sdpa(q, k, v, is_causal=True))
    model_full = Call(sdpa)
    inputs = randn((2, 3, 7, 8), (2, 3, 7, 8), (2, 3, 7, 8))
    assert counted(model_causal, inputs).root.total == counted(model_full, inputs).root.total


# --------------------------------------------------------------------------- einsum

einsum = torch.einsum

# (equation or fn, operand shapes, MACs)
EINSUM_CASES = [
    pytest.param("bij,bjk->bik", [(4, 3, 5), (4, 5, 6)], 4 * 3 * 5 * 6, id="batched-matmul"),
    pytest.param("ijk,jkl->il", [(3, 4, 5), (4, 5, 6)], 3 * 4 * 5 * 6, id="contract-two-indices"),
    pytest.param("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 6)], 2 * 3 * 4 * 5 * 6, id="ellipsis"),
    pytest.param("...ij,jk->...ik", [(2, 3, 4, 5), (5, 6)], 2 * 3 * 4 * 5 * 6, id="ellipsis-one-side"),
    pytest.param("ij,jk,kl->il", [(3, 4), (4, 5), (5, 6)], 3 * 4 * 5 + 3 * 5 * 6, id="three-operands"),
    pytest.param("bhqd,bhkd->bhqk", [(2, 3, 7, 8), (2, 3, 5, 8)], 2 * 3 * 7 * 5 * 8, id="attention-scores"),
    pytest.param("ij,jk", [(3, 4), (4, 5)], 3 * 4 * 5, id="implicit-output"),
    pytest.param("i,i->", [(5,), (5,)], 5, id="dot"),
    # i is summed out of the first operand before the product: [j] x [j, k] -> [k]
    pytest.param("ij,jk->k", [(3, 4), (4, 5)], 4 * 5, id="sum-then-contract"),
]


@pytest.mark.parametrize(("equation", "shapes", "macs"), EINSUM_CASES)
def test_einsum_closed_form(equation, shapes, macs):
    model = Call(lambda *ops: einsum(equation, *ops))
    operands = randn(*shapes)

    result = counted(model, operands)

    assert result.total_macs == macs
    assert result.matmul_flops == 2 * macs
    assert result.matmul_flops == flop_counter_flops(model, operands)


def test_einsum_operand_list_counts_as_operands():
    model = Call(lambda a, b, c: einsum("ij,jk,kl->il", [a, b, c]))
    operands = randn((3, 4), (4, 5), (5, 6))
    result = counted(model, operands)
    assert result.total_macs == 3 * 4 * 5 + 3 * 5 * 6
    assert result.matmul_flops == flop_counter_flops(model, operands)


@pytest.mark.parametrize(("equation", "shapes", "numel"), [
    pytest.param("i,j->ij", [(5,), (6,)], 5 * 6, id="outer-product"),
    pytest.param("ij,ij->ij", [(3, 4), (3, 4)], 3 * 4, id="hadamard"),
])
def test_einsum_without_contraction_is_elementwise(equation, shapes, numel):
    model = Call(lambda *ops: einsum(equation, *ops))
    operands = randn(*shapes)

    result = counted(model, operands)

    assert flop_counter_flops(model, operands) == 0
    assert (result.total_macs, result.total_flops, result.matmul_flops) == (0, numel, 0)


# --------------------------------------------------------------------------- matmul family, linear, conv


def mv_as_mm(a, x):
    return torch.mm(a, x[:, None])


# (fn, input shapes, MACs, FCM oracle: None for the same fn, else an equivalent the FCM counts)
MATMUL_CASES = [
    pytest.param(torch.matmul, [(3, 4), (4, 5)], 3 * 4 * 5, None, id="torch.matmul"),
    pytest.param(lambda a, b: a @ b, [(3, 4), (4, 5)], 3 * 4 * 5, None, id="@"),
    pytest.param(lambda a, b: a.matmul(b), [(3, 4), (4, 5)], 3 * 4 * 5, None, id="Tensor.matmul"),
    pytest.param(lambda a, b: b.__rmatmul__(a), [(3, 4), (4, 5)], 3 * 4 * 5, None, id="__rmatmul__"),
    pytest.param(torch.mm, [(3, 4), (4, 5)], 3 * 4 * 5, None, id="mm"),
    pytest.param(lambda a, b: a.mm(b), [(3, 4), (4, 5)], 3 * 4 * 5, None, id="Tensor.mm"),
    pytest.param(torch.bmm, [(2, 3, 4), (2, 4, 5)], 2 * 3 * 4 * 5, None, id="bmm"),
    pytest.param(torch.addmm, [(5,), (3, 4), (4, 5)], 3 * 4 * 5, None, id="addmm"),
    pytest.param(lambda c, a, b: c.addmm(a, b, beta=0.5, alpha=2.0), [(3, 5), (3, 4), (4, 5)], 3 * 4 * 5, None,
                 id="Tensor.addmm"),
    pytest.param(lambda c, a, b: torch.addmm(c, mat1=a, mat2=b), [(3, 5), (3, 4), (4, 5)], 3 * 4 * 5, None,
                 id="addmm-keywords"),
    pytest.param(torch.baddbmm, [(2, 3, 5), (2, 3, 4), (2, 4, 5)], 2 * 3 * 4 * 5, None, id="baddbmm"),
    pytest.param(torch.addbmm, [(3, 5), (2, 3, 4), (2, 4, 5)], 2 * 3 * 4 * 5,
                 lambda c, a, b: c + torch.bmm(a, b).sum(0), id="addbmm"),
    pytest.param(torch.mv, [(3, 4), (4,)], 3 * 4, mv_as_mm, id="mv"),
    pytest.param(torch.addmv, [(3,), (3, 4), (4,)], 3 * 4, lambda c, a, x: c + mv_as_mm(a, x)[:, 0], id="addmv"),
    pytest.param(torch.dot, [(4,), (4,)], 4, lambda a, b: torch.mm(a[None, :], b[:, None]), id="dot"),
    pytest.param(torch.matmul, [(2, 1, 3, 4), (5, 4, 6)], 2 * 5 * 3 * 4 * 6, None, id="broadcasting"),
    pytest.param(torch.matmul, [(4,), (4, 5)], 4 * 5, None, id="1d@2d"),
    pytest.param(torch.matmul, [(4,), (2, 4, 5)], 2 * 4 * 5, None, id="1d@3d"),
    pytest.param(torch.matmul, [(3, 4), (4,)], 3 * 4, mv_as_mm, id="2d@1d"),
    pytest.param(torch.matmul, [(2, 3, 4), (4,)], 2 * 3 * 4, lambda a, x: a @ x[:, None], id="3d@1d"),
    pytest.param(torch.matmul, [(4,), (4,)], 4, lambda a, b: torch.mm(a[None, :], b[:, None]), id="1d@1d"),
    pytest.param(F.linear, [(2, 3, 4, 8), (5, 8)], 2 * 3 * 4 * 5 * 8, None, id="linear-4d"),
    pytest.param(F.linear, [(2, 3, 4, 8), (5, 8), (5,)], 2 * 3 * 4 * 5 * 8, None, id="linear-4d-bias"),
    pytest.param(lambda x, w: F.linear(input=x, weight=w), [(2, 3, 8), (5, 8)], 2 * 3 * 5 * 8, None,
                 id="linear-keywords"),
    pytest.param(F.linear, [(8,), (5, 8)], 5 * 8, None, id="linear-1d-input"),
    pytest.param(F.linear, [(2, 8), (8,)], 2 * 8, lambda x, w: x @ w[:, None], id="linear-1d-weight"),
    pytest.param(F.conv2d, [(2, 4, 9, 9), (6, 4, 3, 3)], 2 * 6 * 7 * 7 * (4 * 3 * 3), None, id="conv2d"),
    pytest.param(lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=2), [(2, 4, 9, 9), (6, 2, 3, 3)],
                 2 * 6 * 5 * 5 * (4 // 2 * 3 * 3), None, id="conv2d-strided-grouped"),
    pytest.param(F.conv_transpose2d, [(2, 4, 5, 5), (4, 6, 3, 3)], 2 * 4 * 5 * 5 * (6 * 3 * 3), None,
                 id="conv-transpose2d"),
    pytest.param(lambda x, w: F.conv_transpose2d(x, w, stride=2, groups=2), [(2, 4, 5, 5), (4, 3, 3, 3)],
                 2 * 4 * 5 * 5 * (6 // 2 * 3 * 3), None, id="conv-transpose2d-strided-grouped"),
    pytest.param(torch.linalg.matmul, [(2, 3, 4), (4, 5)], 2 * 3 * 4 * 5, None, id="linalg.matmul"),
    pytest.param(lambda a, b: torch.tensordot(a, b, dims=1), [(3, 4), (4, 5)], 3 * 4 * 5, None, id="tensordot"),
    pytest.param(lambda a, b: torch.tensordot(a, b, dims=([1, 2], [0, 1])), [(2, 3, 4), (3, 4, 5)],
                 2 * 5 * (3 * 4), None, id="tensordot-two-indices"),
    # the cheapest order: (AB)C = 3*4*5 + 3*5*6 beats A(BC) = 4*5*6 + 3*4*6
    pytest.param(lambda a, b, c: torch.linalg.multi_dot([a, b, c]), [(3, 4), (4, 5), (5, 6)],
                 3 * 4 * 5 + 3 * 5 * 6, None, id="multi_dot"),
]


@pytest.mark.parametrize(("fn", "shapes", "macs", "oracle"), MATMUL_CASES)
def test_matmul_like_closed_form(fn, shapes, macs, oracle):
    model = Call(fn)
    inputs = randn(*shapes)

    result = counted(model, inputs)

    assert result.total_macs == macs
    assert result.total_flops == result.matmul_flops == 2 * macs
    [stat] = result.root.functions
    assert stat.calls == 1 and stat.counts.macs == macs
    assert result.matmul_flops == flop_counter_flops(Call(oracle or fn), inputs)


def test_flop_counter_misses_what_the_oracles_stand_in_for():
    """The mm/bmm stand-ins above exist because FCM counts these products as 0."""
    a, x, b3 = randn((3, 4), (4,), (2, 4, 5))
    assert flop_counter_flops(Call(torch.mv), (a, x)) == 0
    assert flop_counter_flops(Call(torch.dot), (x, x)) == 0
    assert flop_counter_flops(Call(torch.addbmm), (randn((5, 5))[0], b3.transpose(1, 2), b3)) == 0


# --------------------------------------------------------------------------- elementwise functions


# (fn, input shapes, FLOPs): 0 MACs, FLOPs per element of the documented formula
ELEMENTWISE_CASES = [
    pytest.param(lambda x: F.softmax(x, dim=-1), [(3, 4, 5)], 3 * 4 * (3 * 5 - 1), id="softmax-last"),
    pytest.param(lambda x: F.softmax(x, dim=1), [(3, 4, 5)], 3 * 5 * (3 * 4 - 1), id="softmax-dim1"),
    pytest.param(lambda x: x.softmax(-1), [(3, 4, 5)], 3 * 4 * (3 * 5 - 1), id="Tensor.softmax"),
    pytest.param(lambda x, w, b: F.layer_norm(x, (5,), w, b), [(3, 4, 5), (5,), (5,)], 3 * 4 * 5 * (3 + 2 + 1 + 1),
                 id="layer_norm-affine"),
    pytest.param(lambda x: F.layer_norm(x, (4, 5)), [(3, 4, 5)], 3 * 4 * 5 * (3 + 2), id="layer_norm-plain"),
    pytest.param(F.gelu, [(3, 4, 5)], 3 * 4 * 5 * 5, id="gelu"),
    pytest.param(lambda x: F.gelu(x, approximate="tanh"), [(3, 4, 5)], 3 * 4 * 5 * 9, id="gelu-tanh"),
    pytest.param(lambda a, b: a + b, [(3, 4), (3, 4)], 3 * 4, id="add"),
    pytest.param(lambda a, b: a + b, [(3, 4), (4,)], 3 * 4, id="add-broadcast"),
    pytest.param(lambda a: 1.0 + a, [(3, 4)], 3 * 4, id="radd-scalar"),
    pytest.param(torch.add, [(3, 4), (3, 4)], 3 * 4, id="torch.add"),
    pytest.param(lambda a, b: a.add_(b), [(3, 4), (3, 4)], 3 * 4, id="add_"),
    pytest.param(lambda a, b: a * b, [(3, 4), (3, 4)], 3 * 4, id="mul"),
    pytest.param(lambda a: 2 * a, [(3, 4)], 3 * 4, id="rmul-scalar"),
    pytest.param(torch.mul, [(2, 1, 4), (3, 1)], 2 * 3 * 4, id="torch.mul-broadcast"),
    pytest.param(torch.outer, [(5,), (6,)], 5 * 6, id="outer"),
    pytest.param(torch.kron, [(2, 3), (4, 5)], 2 * 3 * 4 * 5, id="kron"),
    pytest.param(torch.addr, [(5, 6), (5,), (6,)], 2 * 5 * 6, id="addr"),
    # a difference, a square and a sum per pair and dimension
    pytest.param(torch.cdist, [(2, 5, 3), (2, 6, 3)], 3 * (2 * 5 * 6) * 3, id="cdist"),
]


@pytest.mark.parametrize(("fn", "shapes", "flops"), ELEMENTWISE_CASES)
def test_elementwise_function_flops(fn, shapes, flops):
    model = Call(fn)
    inputs = randn(*shapes)

    result = counted(model, inputs)

    assert (result.total_macs, result.total_flops, result.matmul_flops) == (0, flops, 0)
    [stat] = result.root.functions
    assert stat.calls == 1 and stat.status == "counted"
    assert flop_counter_flops(model, randn(*shapes)) == 0


def test_views_are_free_and_leave_no_record():
    model = Call(lambda a: a.view(4, 3).transpose(0, 1).reshape(12).unsqueeze(0).permute(1, 0)[2:5].contiguous())
    result = counted(model, randn((3, 4)))
    assert (result.total_macs, result.total_flops) == (0, 0)
    assert result.root.functions == ()


@pytest.mark.parametrize("fn", [
    pytest.param(lambda a, b: a + b, id="add"),
    pytest.param(lambda a, b: a * b, id="mul"),
    pytest.param(lambda a, b: torch.add(a, b, alpha=2), id="torch.add"),
])
def test_integer_ops_are_free_and_leave_no_record(fn):
    ints = torch.arange(12).view(3, 4)
    result = counted(Call(fn), (ints, ints))
    assert (result.total_macs, result.total_flops) == (0, 0)
    assert result.root.functions == ()


def test_boolean_ops_are_free_and_leave_no_record():
    a, b = torch.ones(3, 4, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.bool)
    result = counted(Call(lambda a, b: (a & b) | ~a), (a, b))
    assert (result.total_macs, result.total_flops) == (0, 0)
    assert result.root.functions == ()


# --------------------------------------------------------------------------- nothing counted twice


class LinearBoth(nn.Module):
    """Calls F.linear itself and also holds an nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 6)
        self.weight = nn.Parameter(torch.randn(5, 8))

    def forward(self, x):
        return self.proj(x), F.linear(x, self.weight)


def test_functional_and_module_linear_are_each_counted_once():
    model = LinearBoth()
    (x,) = randn((2, 3, 8))

    result = counted(model, (x,))

    assert result.layer("proj").own.macs == 2 * 3 * 8 * 6
    assert result.layer("proj").functions == ()
    assert result.layer("").own.macs == 2 * 3 * 8 * 5
    assert result.total_macs == 2 * 3 * 8 * 6 + 2 * 3 * 8 * 5
    assert result.total_params == 8 * 6 + 6 + 5 * 8
    assert result.matmul_flops == flop_counter_flops(model, (x,))


class FancyLinear(nn.Linear):
    """A subclass of a ruled layer whose forward does more than the layer: a bias add and a tanh."""

    def forward(self, x):
        return torch.tanh(F.linear(x, self.weight) + self.bias)


def test_subclass_that_does_more_is_traced_not_counted_by_its_base_rule():
    model = nn.Sequential(FancyLinear(8, 5))
    (x,) = randn((2, 3, 8))

    result = counted(model, (x,))

    layer = result.layer("0")
    assert layer.status == "traced"
    assert [f.function for f in layer.functions] == ["torch.nn.functional.linear", "torch.Tensor.add", "torch.tanh"]
    outputs = 2 * 3 * 5
    assert (result.total_macs, result.total_flops) == (outputs * 8, 2 * outputs * 8 + outputs + outputs)
    assert result.matmul_flops == flop_counter_flops(model, (x,))


class NestedRules(nn.Module):
    """An MHA (module rule) inside a module without a rule that calls matmul itself."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x)
        return out @ x.transpose(1, 2)


def test_module_rule_inside_traced_module():
    torch.manual_seed(0)
    model = NestedRules()
    (x,) = randn((2, 7, 16))

    result = counted(model, (x,))

    mha = 2 * 7 * 16 * 16 * 2 + 2 * 7 * (16 + 16) * 16 + 2 * 4 * 7 * 7 * 4 * 2
    assert result.layer("attn").total.macs == mha
    assert result.layer("").own.macs == 2 * 7 * 16 * 7
    assert result.total_macs == mha + 2 * 7 * 16 * 7
    assert result.matmul_flops == flop_counter_flops(model, (x,))


# --------------------------------------------------------------------------- attribution to the calling module


class HandAttention(nn.Module):
    """Attention written out: scores, softmax, weighted sum, all in its own forward."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, q, k, v):
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        return scores.softmax(dim=-1) @ v


class HandBlock(nn.Module):
    def __init__(self, embed: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(embed, 3 * embed)
        self.attn = HandAttention(heads)
        self.out = nn.Linear(embed, embed)

    def forward(self, x):
        b, t, e = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        y = self.attn(q, k, v).transpose(1, 2).reshape(b, t, e)
        return x + self.out(y)


def test_functional_macs_appear_in_the_calling_modules_row():
    torch.manual_seed(0)
    model = HandBlock(16, 4)
    (x,) = randn((2, 7, 16))

    result = counted(model, (x,))

    attn = result.layer("attn")
    attention_macs = 2 * 4 * 7 * 7 * 4 + 2 * 4 * 7 * 7 * 4  # scores + weighted sum, per head
    assert attn.own.macs == attention_macs
    assert attn.own.matmul_flops == 2 * attention_macs
    assert attn.own.flops == 2 * attention_macs + 2 * 4 * 7 * 7 + 2 * 4 * 7 * (3 * 7 - 1)  # / sqrt(d), softmax
    functions = {short_name(f.function): f for f in attn.functions}
    assert functions["matmul"].calls == 2
    assert functions["matmul"].counts.macs == attention_macs
    assert functions["softmax"].calls == 1
    assert result.layer("").own == result.layer("").functions[0].counts  # x + out(y)
    assert result.layer("").own.flops == 2 * 7 * 16
    assert result.total_macs == 2 * 7 * 16 * 3 * 16 + attention_macs + 2 * 7 * 16 * 16
    assert result.matmul_flops == flop_counter_flops(model, (x,))


def test_rows_sum_to_the_totals():
    torch.manual_seed(0)
    model = nn.Sequential(HandBlock(16, 4), HandBlock(16, 4))
    (x,) = randn((2, 7, 16))
    result = counted(model, (x,))
    assert_tree_invariant(result.root)
    assert result.total_macs == 2 * (2 * 7 * 16 * 3 * 16 + 2 * (2 * 4 * 7 * 7 * 4) + 2 * 7 * 16 * 16)
    assert result.root.total == result.layer("0").total + result.layer("1").total


# --------------------------------------------------------------------------- uncounted functions

class Bessel(nn.Module):
    def forward(self, x):
        return torch.special.i0(x)


class Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()


class UsesUnruled(nn.Module):
    """torch.fft.rfft has no function rule; at the aten level it runs aten._fft_r2c, which has none either."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.spectrum = Spectrum()

    def forward(self, x):
        x = torch.fft.rfft(self.proj(x)).abs()
        return self.spectrum(torch.fft.rfft(x).abs())


def test_operator_without_rule_is_reported_by_its_aten_name():
    assert torch.fft.rfft not in REGISTRY.function_rules, "torch.fft.rfft got a rule: pick a function that has none"
    model = UsesUnruled()
    (x,) = randn((2, 4))

    with pytest.warns(UncountedWarning, match=r"aten\._fft_r2c ×3"):
        result = profile(model, (x,))

    [entry] = result.uncounted
    assert (entry.kind, entry.name, entry.calls) == ("function", "aten._fft_r2c", 3)
    assert set(entry.layers) == {"", "spectrum"}
    [stat] = [f for f in result.root.functions if short_name(f.function) == "_fft_r2c"]
    assert (stat.calls, stat.status) == (2, "uncounted")
    assert result.root.uncounted and result.layer("spectrum").uncounted
    assert not result.layer("proj").uncounted
    assert result.total_macs == 2 * 4 * 4  # the Linear only
    table = result.table()
    fft_row = next(line for line in table.splitlines() if "_fft_r2c()" in line)
    assert "uncounted" in fft_row
    spectrum_row = next(line for line in table.splitlines() if "spectrum" in line)
    assert "uncounted" in spectrum_row
    assert "aten._fft_r2c ×3" in table


def test_function_without_rule_is_counted_by_its_aten_operators():
    # torch.special.i0 has no function rule: it runs aten.i0, a pointwise operator, 1 FLOP per element
    assert torch.special.i0 not in REGISTRY.function_rules
    model = nn.Sequential(Bessel())
    (x,) = randn((2, 4))
    result = profile(model, (x,), strict=True)
    assert (result.total_macs, result.total_flops) == (0, 2 * 4)
    assert [f.function for f in result.layer("0").functions] == ["aten.i0"]


def test_capture_without_the_function_mode_sees_modules_only():
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 4)

        def forward(self, x):
            return self.proj(x) @ torch.ones(4, 2)

    model, x = Head(), torch.rand(3, 8)
    full = capture_forward(model, lambda: model(x), REGISTRY.resolver({}))
    modules_only = capture_forward(model, lambda: model(x), REGISTRY.resolver({}), functions=False)
    # proj: Linear(8, 4) on 3 rows; the matmul with [4, 2] on 3 rows is a function call
    assert sum(r.macs for r in full.records) == 3 * 8 * 4 + 3 * 4 * 2
    assert sum(r.macs for r in modules_only.records) == 3 * 8 * 4
    assert [r.function for r in modules_only.records] == [None, None]
