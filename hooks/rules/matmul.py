"""Matrix products written as torch functions: every output element is a dot product.

MACs = output elements x contracted length; the ``add`` in ``addmm``/``baddbmm`` is a bias and,
as in FlopCounterMode, not counted. ``einsum`` contracts its operands pairwise from left to
right, as torch does without opt_einsum.
"""

from __future__ import annotations

from math import isqrt, prod

import torch
import torch.nn.functional as F

from hooks.counts import Counts
from hooks.registry import function_rule
from hooks.rules.common import arg

__all__ = [
    "matmul_counts",
    "addmm_counts",
    "addbmm_counts",
    "einsum_counts",
    "einsum_counts_of",
    "tensordot_counts",
    "multi_dot_counts",
    "outer_counts",
    "cdist_counts",
]


@function_rule(torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.linalg.matmul, torch.mm, torch.Tensor.mm,
               torch.bmm, torch.Tensor.bmm, torch.mv, torch.Tensor.mv, torch.dot, torch.Tensor.dot,
               torch.vdot, torch.Tensor.vdot, torch.inner, torch.Tensor.inner)
def matmul_counts(args: tuple, kwargs: dict, out) -> Counts:
    # [*, m, n] = [*, m, k] @ [*, k, n] (1-D operands drop m or n); broadcast batch dims included
    return Counts.matmul(out.numel() * args[0].shape[-1])


@function_rule(torch.Tensor.__rmatmul__)
def rmatmul_counts(args: tuple, kwargs: dict, out) -> Counts:
    # b.__rmatmul__(a) is a @ b
    return Counts.matmul(out.numel() * args[1].shape[-1])


@function_rule(torch.addmm, torch.Tensor.addmm, torch.Tensor.addmm_, torch.baddbmm, torch.Tensor.baddbmm,
               torch.Tensor.baddbmm_, torch.addmv, torch.Tensor.addmv, torch.Tensor.addmv_, torch.addmv_)
def addmm_counts(args: tuple, kwargs: dict, out) -> Counts:
    # out = beta * input + alpha * (m1 @ m2); m1 [*, m, k] is addmm's mat1, baddbmm's batch1 or
    # addmv's mat: the capture has moved it to position 1 however it was passed
    return Counts.matmul(out.numel() * args[1].shape[-1])


@function_rule(torch.addbmm, torch.Tensor.addbmm, torch.Tensor.addbmm_)
def addbmm_counts(args: tuple, kwargs: dict, out) -> Counts:
    # [m, n] = input + sum_b batch1[b] @ batch2[b]; batch1 [b, m, k], batch2 [b, k, n]
    batch1 = arg(args, kwargs, 1, "batch1")
    return Counts.matmul(batch1.numel() * arg(args, kwargs, 2, "batch2").shape[-1])


def _parse_einsum(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str, dict[str, int]]:
    """Operand subscripts, output subscripts and index sizes, with '...' as one letter per dim."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum equation {equation!r} has {len(terms)} operands, got {len(shapes)}")
    ellipsis_dims = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ellipsis = "".join(chr(0x2460 + i) for i in range(ellipsis_dims))  # letters no equation uses
    sizes: dict[str, int] = {}
    operands = []
    for term, shape in zip(terms, shapes):
        n = len(shape) - len(term.replace("...", ""))
        letters = term.replace("...", ellipsis[ellipsis_dims - n :])
        for letter, size in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), size)  # broadcasting: 1 against n is n
        operands.append(letters)
    if arrow:
        output = rhs.replace("...", ellipsis)
    else:
        letters = "".join(operands)
        output = ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ellipsis))
    return operands, output, sizes


def einsum_counts_of(equation: str, shapes: list[tuple[int, ...]]) -> Counts:
    """Counts of torch's pairwise left-to-right contraction of ``shapes`` by ``equation``.

    Each pair is one batched matmul over the indices either operand still needs: MACs = the
    product of their sizes. A pair that sums no index is an elementwise product (torch runs it
    as ``mul``): one FLOP per element, no MACs. An index only one operand has and nothing later
    needs is summed out before (additions, not counted).
    """
    operands, output, sizes = _parse_einsum(equation, shapes)
    counts = Counts()
    left = operands[0]
    for i, right in enumerate(operands[1:], start=1):
        later = set(output).union(*operands[i + 1 :])
        left_kept = {c for c in left if c in right or c in later}
        right_kept = {c for c in right if c in left or c in later}
        indices = left_kept | right_kept
        work = prod(sizes[c] for c in indices)
        summed = (left_kept & right_kept) - later
        counts += Counts.matmul(work) if summed else Counts.elementwise(flops=work)
        left = "".join(sorted(c for c in indices if c in later))
    return counts


@function_rule(torch.einsum)
def einsum_counts(args: tuple, kwargs: dict, out) -> Counts:
    # einsum(equation, *operands) or einsum(equation, [operands])
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    shapes = [tuple(t.shape) for t in operands]
    if len(shapes) == 1:
        # a single operand only sums or permutes: one add per input element it reduces
        return Counts.elementwise(flops=prod(shapes[0]) - out.numel() if prod(shapes[0]) > out.numel() else 0)
    return einsum_counts_of(equation, shapes)


@function_rule(torch.tensordot)
def tensordot_counts(args: tuple, kwargs: dict, out) -> Counts:
    # a [*free_a, *K], b [*K, *free_b] -> [*free_a, *free_b]: a * b / out = K^2
    a, b = args[0], args[1]
    contracted = isqrt(a.numel() * b.numel() // out.numel()) if out.numel() else 0
    return Counts.matmul(out.numel() * contracted)


def _chain_macs(dims: list[int]) -> int:
    """MACs of the cheapest order to multiply matrices [dims[0], dims[1]], [dims[1], dims[2]]..."""
    n = len(dims) - 1
    cost = [[0] * n for _ in range(n)]
    for length in range(2, n + 1):
        for i in range(n - length + 1):
            j = i + length - 1
            cost[i][j] = min(
                cost[i][k] + cost[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1] for k in range(i, j)
            )
    return cost[0][n - 1]


@function_rule(torch.linalg.multi_dot)
def multi_dot_counts(args: tuple, kwargs: dict, out) -> Counts:
    # torch multiplies in the cheapest order; a 1-D first (last) operand is a row (column)
    tensors = list(arg(args, kwargs, 0, "tensors"))
    shapes = [tuple(t.shape) for t in tensors]
    if len(shapes[0]) == 1:
        shapes[0] = (1, shapes[0][0])
    if len(shapes[-1]) == 1:
        shapes[-1] = (shapes[-1][0], 1)
    return Counts.matmul(_chain_macs([shapes[0][0]] + [s[1] for s in shapes]))


@function_rule(torch.outer, torch.Tensor.outer, torch.ger, torch.Tensor.ger, torch.kron, torch.Tensor.kron)
def outer_counts(args: tuple, kwargs: dict, out) -> Counts:
    # every output element is one product: no sum, so no MACs (as torch's mul, and FlopCounterMode)
    return Counts.elementwise(flops=out.numel())


@function_rule(torch.addr, torch.Tensor.addr, torch.Tensor.addr_)
def addr_counts(args: tuple, kwargs: dict, out) -> Counts:
    # beta * input + alpha * outer(vec1, vec2): a product and a sum per output element
    return Counts.elementwise(flops=2 * out.numel())


@function_rule(torch.cdist)
def cdist_counts(args: tuple, kwargs: dict, out) -> Counts:
    # [*, P, R] = cdist([*, P, D], [*, R, D]): per pair and dimension a difference, a power and a sum
    return Counts.elementwise(flops=3 * out.numel() * args[0].shape[-1])


def _grouped_mm_counts(args: tuple, kwargs: dict, out) -> Counts:
    # grouped_mm(mat_a, mat_b, offs): [S, K] x [G, K, N] -> [S, N] (rows grouped by offs), or
    # [G, M, K] x [G, K, N] -> [G, M, N]; [M, K] x [K, N] with offs splits K: [G, M, N], K in total
    a, b = args[0], args[1]
    if a.dim() == 2 and b.dim() == 2:
        return Counts.matmul(out.numel() // out.shape[0] * a.shape[-1])
    return Counts.matmul(out.numel() * a.shape[-1])


def _scaled_mm_counts(args: tuple, kwargs: dict, out) -> Counts:
    # FP8 matmul: [m, n] = (mat1 [m, k] * scale_a) @ (mat2 [k, n] * scale_b); the scaling is
    # folded into the kernel, as FlopCounterMode counts it
    return Counts.matmul(out.numel() * args[0].shape[-1])


# F.scaled_mm is plain Python (no __torch_function__): what runs is torch._scaled_mm_v2(mat_a, mat_b, ...)
_SCALED_MM = [f for f in (getattr(torch, "_scaled_mm", None), getattr(F, "scaled_mm", None),
                          getattr(torch, "_scaled_mm_v2", None)) if f is not None]
if _SCALED_MM:
    function_rule(*_SCALED_MM)(_scaled_mm_counts)

_GROUPED_MM = [f for f in (getattr(torch, "_grouped_mm", None), getattr(F, "grouped_mm", None)) if f is not None]
if _GROUPED_MM:  # torch >= 2.8: Mixture-of-Experts layers multiply each expert's tokens at once
    function_rule(*_GROUPED_MM)(_grouped_mm_counts)
