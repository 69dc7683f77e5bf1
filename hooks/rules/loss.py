"""Loss functions: 0 MACs, FLOPs per element of each loss's formula, as torch computes it.

FLOPs count the arithmetic of the formula per element, with exp and log as one FLOP each;
comparisons, clamps, sign flips, gathers and masks are free. Rules read shapes only, so every
element counts (targets equal to ``ignore_index``, branches a value does not take). A reduction of
``m`` loss values adds ``m`` for ``"sum"`` and ``m + 1`` (the adds and one division) for
``"mean"``; ``"none"`` adds nothing. Per loss:

- ``nll_loss`` over ``N`` targets: the reduction of the picked ``-x[t]``; with a class
  ``weight``, ``N`` products ``w[t] · x[t]`` and, for ``"mean"``, ``N`` adds for the denominator
  ``Σ w[t]``.
- ``cross_entropy`` on ``n`` input elements: ``log_softmax`` over the classes (``rows × 3C``, as
  ``F.log_softmax``) plus ``nll_loss``. With ``label_smoothing`` ε, also ``Σ_c -w_c · log p_c`` per
  target (``n`` adds; ``n`` products with a weight), reduced as ``nll_loss`` is (a weighted mean
  sums ``w[t]`` again, as torch does), then ``(1 − ε) · nll + ε / C · smooth``: 3 per loss value.
  Probability targets: ``-Σ_c w_c · t_c · log p_c``, 2 per input element (3 with a weight) with the
  sum, ``+ 1`` for ``"mean"``; smoothing first mixes each target ``t · (1 − ε) + ε / C`` (2 more).
- ``mse_loss``: ``(x − y)²`` 2 per element, then the reduction; ``l1_loss``: ``|x − y|`` 1 per
  element. A ``weight`` multiplies each element (1) and a ``"mean"`` divides by ``Σ w`` (``n``).
- ``smooth_l1_loss``: ``0.5 · d² / β`` 4 per element with ``d = x − y`` (the quadratic branch;
  ``β = 0`` is ``l1_loss``); ``huber_loss``: ``0.5 · d²`` 3 per element; a ``weight`` multiplies
  (1), and the ``"mean"`` is the plain mean of the weighted values.
- ``binary_cross_entropy``: ``-(y · log x + (1 − y) · log(1 − x))`` 7 per element, ``+ 1`` with a
  weight. ``binary_cross_entropy_with_logits``: ``(1 − y) · x − log σ(x)`` 6 per element
  (``log σ`` is 3, as ``F.logsigmoid``); ``pos_weight`` scales ``log σ(x)`` by ``1 + (p − 1) · y``
  (``+ 4``), a ``weight`` multiplies (``+ 1``).
- ``kl_div``: ``y · (log y − x)`` (or ``exp(y) · (y − x)`` with ``log_target``) 3 per element;
  ``"batchmean"`` sums and divides once.
- ``soft_margin_loss``: ``log(1 + exp(−y · x))`` 4 per element; ``margin_ranking_loss``:
  ``max(0, −y · (x1 − x2) + margin)`` 3 per element.
- ``cosine_embedding_loss`` over rows of ``D``: three dot products ``6D``, two ``+ eps``, a product,
  a square root and a division (5), then ``1 − cos`` and ``cos − margin`` both computed and added
  (3): ``6D + 8`` per row before the reduction.

The same formulas count the aten operators (``aten.nll_loss_forward``, ``aten.mse_loss``...), so
the aten view (TorchScript, exported graphs) counts a loss as the Python level does. Where torch
decomposes a loss into other operators (cross entropy with label smoothing or probability targets,
``l1_loss``, ``kl_div``, the margin and cosine losses), the formula is the sum of what those
operators count. ``nn.*Loss`` modules have no rule: their ``forward`` calls these functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn import _reduction

from hooks.counts import Counts
from hooks.registry import function_rule
from hooks.rules.activation import FLOPS_PER_ELEMENT, log_softmax_flops
from hooks.rules.common import arg

__all__ = [
    "reduction_flops",
    "nll_flops",
    "cross_entropy_flops",
    "cross_entropy_counts",
    "nll_loss_counts",
    "mse_loss_counts",
    "l1_loss_counts",
    "smooth_l1_loss_counts",
    "huber_loss_counts",
    "binary_cross_entropy_counts",
    "binary_cross_entropy_with_logits_counts",
    "kl_div_counts",
    "soft_margin_loss_counts",
    "margin_ranking_loss_counts",
    "cosine_embedding_loss_counts",
    "aten_cross_entropy_counts",
    "aten_nll_loss_counts",
    "aten_mse_loss_counts",
    "aten_l1_loss_counts",
    "aten_smooth_l1_loss_counts",
    "aten_huber_loss_counts",
    "aten_binary_cross_entropy_counts",
    "aten_binary_cross_entropy_with_logits_counts",
    "aten_kl_div_counts",
    "aten_soft_margin_loss_counts",
    "aten_margin_ranking_loss_counts",
    "aten_cosine_embedding_loss_counts",
]

# aten's reduction enum: at::Reduction::None, Mean, Sum
_REDUCTIONS = ("none", "mean", "sum")


def reduction_flops(m: int, reduction: str) -> int:
    # "sum": m adds; "mean": m adds and one division; "none": nothing
    if reduction == "mean":
        return m + 1
    return m if reduction == "sum" else 0


def nll_flops(targets: int, weighted: bool, reduction: str) -> int:
    # -w[t] * x[t] per target (the sign is free), reduced; a weighted mean divides by sum(w[t])
    flops = targets if weighted else 0
    if weighted and reduction == "mean":
        flops += targets
    return flops + reduction_flops(targets, reduction)


def cross_entropy_flops(numel: int, classes: int, targets: int, probabilities: bool, weighted: bool,
                        reduction: str, label_smoothing: float) -> int:
    """FLOPs of ``cross_entropy`` on ``numel`` input elements with ``classes`` along the class dim and
    ``targets`` target elements: class indices, or ``probabilities`` of the input's shape."""
    flops = log_softmax_flops(numel, classes)
    if probabilities:
        # -sum_c(w_c * t_c * log p_c): products and the sum; smoothing mixes t * (1 - e) + e / C first
        flops += (2 + weighted) * numel + (2 * numel if label_smoothing > 0 else 0)
        return flops + (1 if reduction == "mean" else 0)
    flops += nll_flops(targets, weighted, reduction)
    if label_smoothing > 0:
        # smooth = sum_c -w_c * log p_c per target, reduced as nll is (a weighted mean sums w[t]
        # again); then (1 - e) * nll + e / C * smooth, 3 per loss value
        flops += (1 + weighted) * numel + reduction_flops(targets, reduction)
        flops += targets if weighted and reduction == "mean" else 0
        flops += 3 * (targets if reduction == "none" else 1)
    return flops


def _cross_entropy(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                   label_smoothing: float) -> Counts:
    # [N, C, *] (or [C]) logits; targets [N, *] class indices, or [N, C, *] probabilities
    classes = x.shape[0 if x.dim() == 1 else 1]
    probabilities = x.shape == target.shape
    return Counts.elementwise(flops=cross_entropy_flops(
        x.numel(), classes, target.numel(), probabilities, weight is not None, reduction, label_smoothing))


def _legacy(args: tuple, kwargs: dict, size_average_at: int, reduce_at: int) -> str | None:
    """The reduction the deprecated ``size_average``/``reduce`` arguments ask for; None without them."""
    size_average = arg(args, kwargs, size_average_at, "size_average", None)
    reduce = arg(args, kwargs, reduce_at, "reduce", None)
    if size_average is None and reduce is None:
        return None
    return _reduction.legacy_get_string(size_average, reduce, emit_warning=False)


def _reduction_of(args: tuple, kwargs: dict, size_average_at: int, reduce_at: int, reduction_at: int) -> str:
    """A ``torch.nn.functional`` loss's reduction, the deprecated arguments first as torch reads them."""
    return _legacy(args, kwargs, size_average_at, reduce_at) or arg(args, kwargs, reduction_at, "reduction", "mean")


def _aten_reduction(args: tuple, kwargs: dict, index: int) -> str:
    """An aten loss operator's reduction, an ``at::Reduction`` enum (default Mean)."""
    return _REDUCTIONS[int(arg(args, kwargs, index, "reduction", 1))]


def _numel(*tensors: torch.Tensor) -> int:
    """Elements of the tensors broadcast together."""
    return torch.Size(torch.broadcast_shapes(*(t.shape for t in tensors))).numel()


def _aten_packets(*names: str) -> list[torch._ops.OpOverloadPacket]:
    """``torch.ops.aten.<name>`` for each name this torch has."""
    return [getattr(torch.ops.aten, name) for name in names if hasattr(torch.ops.aten, name)]


def _register_aten(rule: Callable[[tuple, dict, object], Counts], *names: str) -> None:
    packets = _aten_packets(*names)
    if packets:
        function_rule(*packets)(rule)


# --------------------------------------------------------------------------- negative log likelihood


@function_rule(F.cross_entropy)
def cross_entropy_counts(args: tuple, kwargs: dict, out) -> Counts:
    # cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing)
    return _cross_entropy(args[0], arg(args, kwargs, 1, "target"), arg(args, kwargs, 2, "weight", None),
                          _reduction_of(args, kwargs, 3, 5, 6), arg(args, kwargs, 7, "label_smoothing", 0.0))


def aten_cross_entropy_counts(args: tuple, kwargs: dict, out) -> Counts:
    # cross_entropy_loss(self, target, weight, reduction, ignore_index, label_smoothing)
    return _cross_entropy(args[0], arg(args, kwargs, 1, "target"), arg(args, kwargs, 2, "weight", None),
                          _aten_reduction(args, kwargs, 3), arg(args, kwargs, 5, "label_smoothing", 0.0))


_register_aten(aten_cross_entropy_counts, "cross_entropy_loss")


@function_rule(F.nll_loss)
def nll_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # nll_loss(input [N, C, *], target [N, *], weight [C], size_average, ignore_index, reduce, reduction)
    target, weight = arg(args, kwargs, 1, "target"), arg(args, kwargs, 2, "weight", None)
    return Counts.elementwise(flops=nll_flops(target.numel(), weight is not None, _reduction_of(args, kwargs, 3, 5, 6)))


def aten_nll_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # nll_loss_forward(self, target, weight, reduction, ignore_index) -> (output, total_weight);
    # nll_loss2d_forward and the composite nll_loss, nll_loss_nd alike
    target, weight = arg(args, kwargs, 1, "target"), arg(args, kwargs, 2, "weight", None)
    return Counts.elementwise(flops=nll_flops(target.numel(), weight is not None, _aten_reduction(args, kwargs, 3)))


_register_aten(aten_nll_loss_counts, "nll_loss_forward", "nll_loss2d_forward", "nll_loss", "nll_loss_nd")


# --------------------------------------------------------------------------- regression losses


def _weighted(n: int, flops_per_element: int, weight: torch.Tensor | None, reduction: str) -> int:
    # the loss per element, a product by the weight, the reduction; a weighted mean divides by sum(w)
    flops = (flops_per_element + (weight is not None)) * n + reduction_flops(n, reduction)
    return flops + (weight.numel() if weight is not None and reduction == "mean" else 0)


@function_rule(F.mse_loss)
def mse_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # mse_loss(input, target, size_average, reduce, reduction, weight): (x - y)^2
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    weight = arg(args, kwargs, 5, "weight", None)
    return Counts.elementwise(flops=_weighted(n, 2, weight, _reduction_of(args, kwargs, 2, 3, 4)))


def aten_mse_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # mse_loss(self, target, reduction)
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=_weighted(n, 2, None, _aten_reduction(args, kwargs, 2)))


_register_aten(aten_mse_loss_counts, "mse_loss")


@function_rule(F.l1_loss)
def l1_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # l1_loss(input, target, size_average, reduce, reduction, weight): |x - y|
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    weight = arg(args, kwargs, 5, "weight", None)
    return Counts.elementwise(flops=_weighted(n, 1, weight, _reduction_of(args, kwargs, 2, 3, 4)))


def aten_l1_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # l1_loss(self, target, reduction): composite (sub, abs, mean), never seen below autograd
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=_weighted(n, 1, None, _aten_reduction(args, kwargs, 2)))


_register_aten(aten_l1_loss_counts, "l1_loss")


def _smooth_l1(n: int, beta: float, reduction: str) -> int:
    # 0.5 * d^2 / beta where |d| < beta, |d| - 0.5 * beta outside: d, then the quadratic branch (3)
    return _weighted(n, 4 if beta else 1, None, reduction)


@function_rule(F.smooth_l1_loss)
def smooth_l1_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # smooth_l1_loss(input, target, size_average, reduce, reduction, beta)
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    beta = arg(args, kwargs, 5, "beta", 1.0)
    return Counts.elementwise(flops=_smooth_l1(n, beta, _reduction_of(args, kwargs, 2, 3, 4)))


def aten_smooth_l1_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # smooth_l1_loss(self, target, reduction, beta)
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=_smooth_l1(n, arg(args, kwargs, 3, "beta", 1.0), _aten_reduction(args, kwargs, 2)))


_register_aten(aten_smooth_l1_loss_counts, "smooth_l1_loss")


@function_rule(F.huber_loss)
def huber_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # huber_loss(input, target, reduction, delta, weight): 0.5 * d^2 where |d| <= delta,
    # delta * (|d| - 0.5 * delta) outside; a weighted "mean" is the mean of w * loss
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    weight = arg(args, kwargs, 4, "weight", None)
    reduction = arg(args, kwargs, 2, "reduction", "mean")
    return Counts.elementwise(flops=(3 + (weight is not None)) * n + reduction_flops(n, reduction))


def aten_huber_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # huber_loss(self, target, reduction, delta)
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=3 * n + reduction_flops(n, _aten_reduction(args, kwargs, 2)))


_register_aten(aten_huber_loss_counts, "huber_loss")


# --------------------------------------------------------------------------- binary and divergence losses


def _binary_cross_entropy(x: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> Counts:
    # -(y * log x + (1 - y) * log(1 - x)): 2 logs, 1 - y, 1 - x, 2 products, a sum; * w
    n = x.numel()
    return Counts.elementwise(flops=(7 + (weight is not None)) * n + reduction_flops(n, reduction))


@function_rule(F.binary_cross_entropy)
def binary_cross_entropy_counts(args: tuple, kwargs: dict, out) -> Counts:
    # binary_cross_entropy(input, target, weight, size_average, reduce, reduction)
    return _binary_cross_entropy(args[0], arg(args, kwargs, 2, "weight", None), _reduction_of(args, kwargs, 3, 4, 5))


def aten_binary_cross_entropy_counts(args: tuple, kwargs: dict, out) -> Counts:
    # binary_cross_entropy(self, target, weight, reduction)
    return _binary_cross_entropy(args[0], arg(args, kwargs, 2, "weight", None), _aten_reduction(args, kwargs, 3))


_register_aten(aten_binary_cross_entropy_counts, "binary_cross_entropy")


def _binary_cross_entropy_with_logits(x: torch.Tensor, weight: torch.Tensor | None,
                                      pos_weight: torch.Tensor | None, reduction: str) -> Counts:
    # (1 - y) * x - log_sigmoid(x): 1 - y, a product, log_sigmoid, a difference; pos_weight scales
    # log_sigmoid(x) by 1 + (p - 1) * y (4 more); weight multiplies (1 more)
    n = x.numel()
    per_element = 3 + FLOPS_PER_ELEMENT["logsigmoid"] + 4 * (pos_weight is not None) + (weight is not None)
    return Counts.elementwise(flops=per_element * n + reduction_flops(n, reduction))


@function_rule(F.binary_cross_entropy_with_logits)
def binary_cross_entropy_with_logits_counts(args: tuple, kwargs: dict, out) -> Counts:
    # binary_cross_entropy_with_logits(input, target, weight, size_average, reduce, reduction, pos_weight)
    return _binary_cross_entropy_with_logits(
        args[0], arg(args, kwargs, 2, "weight", None), arg(args, kwargs, 6, "pos_weight", None),
        _reduction_of(args, kwargs, 3, 4, 5))


def aten_binary_cross_entropy_with_logits_counts(args: tuple, kwargs: dict, out) -> Counts:
    # binary_cross_entropy_with_logits(self, target, weight, pos_weight, reduction)
    return _binary_cross_entropy_with_logits(
        args[0], arg(args, kwargs, 2, "weight", None), arg(args, kwargs, 3, "pos_weight", None),
        _aten_reduction(args, kwargs, 4))


_register_aten(aten_binary_cross_entropy_with_logits_counts, "binary_cross_entropy_with_logits")


@function_rule(F.kl_div)
def kl_div_counts(args: tuple, kwargs: dict, out) -> Counts:
    # kl_div(input, target, size_average, reduce, reduction, log_target): y * (log y - x), or
    # exp(y) * (y - x); "batchmean" is a sum and one division by the batch size
    x = args[0]
    n = _numel(x, arg(args, kwargs, 1, "target"))
    reduction = arg(args, kwargs, 4, "reduction", "mean")
    reduced = _legacy(args, kwargs, 2, 3) or ("sum" if reduction == "batchmean" else reduction)
    batch_division = 1 if reduction == "batchmean" and x.dim() else 0
    return Counts.elementwise(flops=3 * n + reduction_flops(n, reduced) + batch_division)


def aten_kl_div_counts(args: tuple, kwargs: dict, out) -> Counts:
    # kl_div(self, target, reduction, *, log_target): composite, never seen below autograd
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=3 * n + reduction_flops(n, _aten_reduction(args, kwargs, 2)))


_register_aten(aten_kl_div_counts, "kl_div")


@function_rule(F.soft_margin_loss)
def soft_margin_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # soft_margin_loss(input, target, size_average, reduce, reduction): log(1 + exp(-y * x))
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=4 * n + reduction_flops(n, _reduction_of(args, kwargs, 2, 3, 4)))


def aten_soft_margin_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # soft_margin_loss(self, target, reduction)
    n = _numel(args[0], arg(args, kwargs, 1, "target"))
    return Counts.elementwise(flops=4 * n + reduction_flops(n, _aten_reduction(args, kwargs, 2)))


_register_aten(aten_soft_margin_loss_counts, "soft_margin_loss")


# --------------------------------------------------------------------------- pairwise losses


def _margin_ranking(x1: torch.Tensor, x2: torch.Tensor, target: torch.Tensor, reduction: str) -> Counts:
    # max(0, -y * (x1 - x2) + margin): a difference, a product, an add
    n = _numel(x1, x2, target)
    return Counts.elementwise(flops=3 * n + reduction_flops(n, reduction))


@function_rule(F.margin_ranking_loss)
def margin_ranking_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # margin_ranking_loss(input1, input2, target, margin, size_average, reduce, reduction)
    return _margin_ranking(args[0], arg(args, kwargs, 1, "input2"), arg(args, kwargs, 2, "target"),
                           _reduction_of(args, kwargs, 4, 5, 6))


def aten_margin_ranking_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # margin_ranking_loss(input1, input2, target, margin, reduction): composite
    return _margin_ranking(args[0], arg(args, kwargs, 1, "input2"), arg(args, kwargs, 2, "target"),
                           _aten_reduction(args, kwargs, 4))


_register_aten(aten_margin_ranking_loss_counts, "margin_ranking_loss")


def _cosine_embedding(x1: torch.Tensor, x2: torch.Tensor, reduction: str) -> Counts:
    # rows of D (x1 [N, D] or [D]): x1.x2, x1.x1, x2.x2 (a product and an add per element each),
    # + eps twice, a product, sqrt, a division; 1 - cos and cos - margin, both, and their sum
    n = _numel(x1, x2)
    rows = n // x1.shape[-1] if x1.dim() and x1.shape[-1] else 0
    return Counts.elementwise(flops=6 * n + 8 * rows + reduction_flops(rows, reduction))


@function_rule(F.cosine_embedding_loss)
def cosine_embedding_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # cosine_embedding_loss(input1, input2, target, margin, size_average, reduce, reduction)
    return _cosine_embedding(args[0], arg(args, kwargs, 1, "input2"), _reduction_of(args, kwargs, 4, 5, 6))


def aten_cosine_embedding_loss_counts(args: tuple, kwargs: dict, out) -> Counts:
    # cosine_embedding_loss(input1, input2, target, margin, reduction): composite
    return _cosine_embedding(args[0], arg(args, kwargs, 1, "input2"), _aten_reduction(args, kwargs, 4))


_register_aten(aten_cosine_embedding_loss_counts, "cosine_embedding_loss")
