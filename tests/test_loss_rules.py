"""Loss functions: exact FLOPs as closed forms, the same at the Python and the aten level.

Each case states its FLOPs as a formula on the shapes (``hooks.rules.loss`` says the conventions):
the loss per element, then the reduction (``"sum"``: ``m`` adds; ``"mean"``: ``m + 1``). The aten
view counts the operators a loss runs (TorchScript, exported graphs, a torch function without a
rule); the checks below remove the Python-level loss rules and expect the same number.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import Call
from hooks import REGISTRY, Registry, capture_forward
from profiler import profile

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|trace|trace_method)` is deprecated:FutureWarning")

N, C, H, W = 4, 5, 3, 2
NC = N * C
LOG_SOFTMAX = N * 3 * C  # rows of C: C exp, C - 1 adds, a log, C subtractions


def tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(N, C, generator=gen),  # logits, predictions
        "y": torch.randn(N, C, generator=gen),  # regression targets
        "p": torch.rand(N, C, generator=gen) * 0.8 + 0.1,  # probabilities
        "t": torch.randint(0, C, (N,), generator=gen),  # class indices
        "w": torch.rand(C, generator=gen),  # a weight per class
        "ew": torch.rand(N, C, generator=gen),  # a weight per element
        "x4": torch.randn(N, C, H, W, generator=gen),
        "t3": torch.randint(0, C, (N, H, W), generator=gen),
        "a": torch.randn(N, generator=gen),
        "b": torch.randn(N, generator=gen),
        "sign": torch.ones(N),
    }


# (function of the tensors, FLOPs). Arguments go by keyword and by position, so the rules read both.
CASES = [
    # cross entropy: log_softmax over the classes, then nll's picked values reduced
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"]), LOG_SOFTMAX + N + 1, id="ce-mean"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], reduction="sum"), LOG_SOFTMAX + N, id="ce-sum"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], reduction="none"), LOG_SOFTMAX, id="ce-none"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], v["w"]),  # w[t] * x, sum, sum(w[t]), division
                 LOG_SOFTMAX + N + N + N + 1, id="ce-weight-mean"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], v["w"], None, -100, None, "none"),
                 LOG_SOFTMAX + N, id="ce-weight-none-positional"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], size_average=False),  # legacy: a sum
                 LOG_SOFTMAX + N, id="ce-size-average-false"),
    pytest.param(lambda v: F.cross_entropy(v["x4"], v["t3"]),  # N*H*W rows and targets
                 N * H * W * 3 * C + N * H * W + 1, id="ce-spatial"),
    pytest.param(lambda v: F.cross_entropy(v["x"][0], v["t"][0]), 3 * C + 1 + 1, id="ce-unbatched"),
    # label smoothing: the sum of -log p over the classes per target, reduced as nll is, then
    # (1 - e) * nll + e / C * smooth, 3 per loss value
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], label_smoothing=0.1),
                 LOG_SOFTMAX + (N + 1) + NC + (N + 1) + 3, id="ce-smoothing-mean"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], reduction="none", label_smoothing=0.1),
                 LOG_SOFTMAX + NC + 3 * N, id="ce-smoothing-none"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["t"], v["w"], label_smoothing=0.1),  # w_c * log p_c too
                 LOG_SOFTMAX + (N + N + N + 1) + (NC + NC) + (N + N + 1) + 3, id="ce-smoothing-weight-mean"),
    # probability targets: -sum(t * log p), a product and an add per element
    pytest.param(lambda v: F.cross_entropy(v["x"], v["p"]), LOG_SOFTMAX + 2 * NC + 1, id="ce-probabilities-mean"),
    pytest.param(lambda v: F.cross_entropy(v["x"], v["p"], v["w"], reduction="sum", label_smoothing=0.2),
                 LOG_SOFTMAX + 2 * NC + 3 * NC, id="ce-probabilities-smoothing-weight-sum"),
    # nll_loss alone
    pytest.param(lambda v: F.nll_loss(v["x"], v["t"]), N + 1, id="nll-mean"),
    pytest.param(lambda v: F.nll_loss(v["x"], v["t"], reduction="none"), 0, id="nll-none"),
    pytest.param(lambda v: F.nll_loss(v["x4"], v["t3"], v["w"], reduction="sum"),  # products and the sum
                 N * H * W + N * H * W, id="nll-spatial-weight-sum"),
    pytest.param(lambda v: F.nll_loss(v["x4"], v["t3"], v["w"]),  # and sum(w[t]), a division
                 N * H * W + N * H * W + N * H * W + 1, id="nll-spatial-weight-mean"),
    # regression: (x - y)^2 is 2, |x - y| is 1; a weight multiplies and a weighted mean sums the weights
    pytest.param(lambda v: F.mse_loss(v["x"], v["y"]), 2 * NC + NC + 1, id="mse-mean"),
    pytest.param(lambda v: F.mse_loss(v["x"], v["y"], reduction="none"), 2 * NC, id="mse-none"),
    pytest.param(lambda v: F.mse_loss(v["x"], v["y"], None, None, "mean", v["ew"]),
                 (2 + 1) * NC + NC + NC + 1, id="mse-weight-mean"),
    pytest.param(lambda v: F.mse_loss(v["x"], v["y"][0], reduce=False),  # [C] broadcast to [N, C]
                 2 * NC, id="mse-broadcast-reduce-false"),
    pytest.param(lambda v: F.l1_loss(v["x"], v["y"], reduction="sum"), NC + NC, id="l1-sum"),
    pytest.param(lambda v: F.smooth_l1_loss(v["x"], v["y"], beta=0.5), 4 * NC + NC + 1, id="smooth-l1-mean"),
    pytest.param(lambda v: F.smooth_l1_loss(v["x"], v["y"], beta=0.0), NC + NC + 1, id="smooth-l1-beta-0-is-l1"),
    pytest.param(lambda v: F.huber_loss(v["x"], v["y"], "sum", 0.5), 3 * NC + NC, id="huber-sum"),
    pytest.param(lambda v: F.huber_loss(v["x"], v["y"], weight=v["ew"]),  # the plain mean of w * loss
                 (3 + 1) * NC + NC + 1, id="huber-weight-mean"),
    # binary: 7 per element on probabilities, 6 on logits (log sigmoid is 3), +4 pos_weight, +1 weight
    pytest.param(lambda v: F.binary_cross_entropy(v["p"], v["p"]), 7 * NC + NC + 1, id="bce-mean"),
    pytest.param(lambda v: F.binary_cross_entropy(v["p"], v["p"], v["w"], reduction="none"),
                 (7 + 1) * NC, id="bce-weight-none"),
    pytest.param(lambda v: F.binary_cross_entropy_with_logits(v["x"], v["p"]), 6 * NC + NC + 1, id="bce-logits-mean"),
    pytest.param(lambda v: F.binary_cross_entropy_with_logits(v["x"], v["p"], v["w"], reduction="sum",
                                                              pos_weight=v["w"]),
                 (6 + 4 + 1) * NC + NC, id="bce-logits-weights-sum"),
    # divergence and margins
    pytest.param(lambda v: F.kl_div(v["x"], v["p"], reduction="batchmean"), 3 * NC + NC + 1, id="kl-batchmean"),
    pytest.param(lambda v: F.kl_div(v["x"], v["y"], None, None, "none", True), 3 * NC, id="kl-log-target-none"),
    pytest.param(lambda v: F.soft_margin_loss(v["x"], v["y"]), 4 * NC + NC + 1, id="soft-margin-mean"),
    pytest.param(lambda v: F.margin_ranking_loss(v["a"], v["b"], v["sign"], margin=0.5),
                 3 * N + N + 1, id="margin-ranking"),
    # cosine: three dot products over D = C, two eps adds, a product, sqrt, a division; both
    # branches (1 - cos, cos - margin) and their sum
    pytest.param(lambda v: F.cosine_embedding_loss(v["x"], v["y"], v["sign"]), 6 * NC + 8 * N + N + 1, id="cosine"),
    pytest.param(lambda v: F.cosine_embedding_loss(v["x"][0], v["y"][0], v["sign"][0], reduction="sum"),
                 6 * C + 8 + 1, id="cosine-unbatched"),
]

LOSS_FUNCTIONS = (
    F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits, F.kl_div, F.soft_margin_loss, F.margin_ranking_loss, F.cosine_embedding_loss,
)


def aten_only() -> Registry:
    """The registry without the Python-level loss rules: each loss is counted by its aten operators."""
    registry = Registry()
    registry.module_rules = dict(REGISTRY.module_rules)
    registry.function_rules = {f: r for f, r in REGISTRY.function_rules.items() if f not in LOSS_FUNCTIONS}
    return registry


def captured(fn: Callable, registry: Registry) -> tuple[int, int, list[str], set[str | None]]:
    """(MACs, FLOPs, uncounted calls, rules used) of ``fn(tensors())`` inside a module."""
    values = tensors()
    model = Call(lambda: fn(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # kl_div's "mean", mse's broadcast
        records = capture_forward(model, lambda: model(), registry.resolver()).records
    calls = [r for r in records if r.function is not None]
    uncounted = [r.function for r in calls if r.status == "uncounted"]
    return sum(r.macs for r in calls), sum(r.flops for r in calls), uncounted, {r.rule for r in calls}


@pytest.mark.parametrize(("fn", "flops"), CASES)
def test_loss_flops_closed_form(fn, flops):
    macs, counted, uncounted, rules = captured(fn, REGISTRY)
    assert (macs, counted, uncounted) == (0, flops, [])
    (rule,) = rules  # the loss's own rule, not the operators underneath
    assert rule in {REGISTRY.function_rules[f].name for f in LOSS_FUNCTIONS}


@pytest.mark.parametrize(("fn", "flops"), CASES)
def test_aten_operators_count_the_same(fn, flops):
    macs, counted, uncounted, rules = captured(fn, aten_only())
    assert (macs, counted, uncounted) == (0, flops, [])
    assert not rules & {REGISTRY.function_rules[f].name for f in LOSS_FUNCTIONS}


def test_loss_rules_are_the_ones_removed():
    # the aten-level check above only means something if every F loss has its own rule
    assert all(REGISTRY.function_rules.get(f) is not None and not REGISTRY.function_rules[f].free
               for f in LOSS_FUNCTIONS)


# --------------------------------------------------------------------------- aten operators called directly


aten = torch.ops.aten
# An exported graph calls torch.ops.aten.* itself: each operator's own rule counts it, with aten's
# argument order (the reduction an int: 0 none, 1 mean, 2 sum)
def aten_case(packet, fn: Callable, flops: int):
    return pytest.param(packet, fn, flops, id=str(packet))


ATEN_CASES = [
    aten_case(aten.nll_loss_forward, lambda v: aten.nll_loss_forward(v["x"], v["t"], None, 1, -100),
                 N + 1),
    aten_case(aten.nll_loss2d_forward, lambda v: aten.nll_loss2d_forward(v["x4"], v["t3"], v["w"], 2, -100),
                 N * H * W + N * H * W),
    aten_case(aten.nll_loss_nd, lambda v: aten.nll_loss_nd(v["x4"], v["t3"]), N * H * W + 1),
    aten_case(aten.nll_loss, lambda v: aten.nll_loss(v["x"], v["t"], v["w"], 0), N),
    aten_case(aten.cross_entropy_loss, lambda v: aten.cross_entropy_loss(v["x"], v["t"], None, 1, -100, 0.1),
                 LOG_SOFTMAX + (N + 1) + NC + (N + 1) + 3),
    aten_case(aten.mse_loss, lambda v: aten.mse_loss(v["x"], v["y"], 0), 2 * NC),
    aten_case(aten.l1_loss, lambda v: aten.l1_loss(v["x"], v["y"]), NC + NC + 1),
    aten_case(aten.smooth_l1_loss, lambda v: aten.smooth_l1_loss(v["x"], v["y"], 2, 0.5), 4 * NC + NC),
    aten_case(aten.huber_loss, lambda v: aten.huber_loss(v["x"], v["y"], 1, 0.5), 3 * NC + NC + 1),
    aten_case(aten.binary_cross_entropy, lambda v: aten.binary_cross_entropy(v["p"], v["p"], v["ew"], 2),
                 (7 + 1) * NC + NC),
    aten_case(aten.binary_cross_entropy_with_logits,
                 lambda v: aten.binary_cross_entropy_with_logits(v["x"], v["p"], None, v["w"], 1),
                 (6 + 4) * NC + NC + 1),
    aten_case(aten.kl_div, lambda v: aten.kl_div(v["x"], v["y"], 2, log_target=True), 3 * NC + NC),
    aten_case(aten.soft_margin_loss, lambda v: aten.soft_margin_loss(v["x"], v["y"], 0), 4 * NC),
    aten_case(aten.margin_ranking_loss, lambda v: aten.margin_ranking_loss(v["a"], v["b"], v["sign"], 0.0, 2),
                 3 * N + N),
    aten_case(aten.cosine_embedding_loss,
                 lambda v: aten.cosine_embedding_loss(v["x"], v["y"], v["sign"], 0.0, 0), 6 * NC + 8 * N),
]


@pytest.mark.parametrize(("packet", "fn", "flops"), ATEN_CASES)
def test_aten_operator_rule_closed_form(packet, fn, flops):
    macs, counted, uncounted, rules = captured(fn, REGISTRY)
    assert (macs, counted, uncounted) == (0, flops, [])
    assert rules == {REGISTRY.function_rules[packet].name}


# --------------------------------------------------------------------------- TorchScript and torch.export


class Losses(nn.Module):
    """Several losses in one forward: the eager, scripted, traced and exported runs count alike."""

    def forward(self, x, y, p, t, w, x4, t3):
        return (F.cross_entropy(x, t, w, label_smoothing=0.1) + F.cross_entropy(x, p)
                + F.nll_loss(x4, t3, reduction="sum") + F.mse_loss(x, y) + F.smooth_l1_loss(x, y)
                + F.huber_loss(x, y) + F.binary_cross_entropy(p, p)
                + F.binary_cross_entropy_with_logits(x, p, pos_weight=w) + F.kl_div(x, p, reduction="sum")
                + F.soft_margin_loss(x, y))


LOSSES_FLOPS = (
    LOG_SOFTMAX + (N + N + N + 1) + (NC + NC) + (N + N + 1) + 3  # smoothed, weighted cross entropy
    + LOG_SOFTMAX + 2 * NC + 1  # probability targets
    + N * H * W  # nll, sum
    + 2 * NC + NC + 1  # mse
    + 4 * NC + NC + 1  # smooth l1
    + 3 * NC + NC + 1  # huber
    + 7 * NC + NC + 1  # bce
    + (6 + 4) * NC + NC + 1  # bce with logits and pos_weight
    + 3 * NC + NC  # kl, sum
    + 4 * NC + NC + 1  # soft margin
    + 9  # the nine additions of the losses
)


def losses_inputs() -> tuple[torch.Tensor, ...]:
    v = tensors()
    return v["x"], v["y"], v["p"], v["t"], v["w"], v["x4"], v["t3"]


@pytest.mark.parametrize("convert", [
    pytest.param(lambda m, args: m, id="eager"),
    pytest.param(lambda m, args: torch.jit.script(m), id="script"),
    pytest.param(lambda m, args: torch.jit.trace(m, args), id="trace",  # F's size checks become constants
                 marks=pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")),
    pytest.param(lambda m, args: torch.export.export(m, args).module(), id="export"),
])
def test_scripted_traced_and_exported_losses_count_as_eager(convert):
    args = losses_inputs()
    result = profile(convert(Losses(), args), inputs=args, strict=True)
    assert (result.total_macs, result.total_flops) == (0, LOSSES_FLOPS)


# --------------------------------------------------------------------------- nn.*Loss modules


# A loss module has no rule of its own: its forward calls the functional loss, counted in its row.
MODULE_CASES = [
    pytest.param(nn.CrossEntropyLoss(label_smoothing=0.1), ("x", "t"), LOG_SOFTMAX + (N + 1) + NC + (N + 1) + 3,
                 id="CrossEntropyLoss"),
    pytest.param(nn.NLLLoss(reduction="none"), ("x", "t"), 0, id="NLLLoss"),
    pytest.param(nn.MSELoss(reduction="sum"), ("x", "y"), 3 * NC, id="MSELoss"),
    pytest.param(nn.L1Loss(), ("x", "y"), NC + NC + 1, id="L1Loss"),
    pytest.param(nn.SmoothL1Loss(beta=2.0), ("x", "y"), 4 * NC + NC + 1, id="SmoothL1Loss"),
    pytest.param(nn.HuberLoss(reduction="none"), ("x", "y"), 3 * NC, id="HuberLoss"),
    pytest.param(nn.BCELoss(), ("p", "p"), 7 * NC + NC + 1, id="BCELoss"),
    pytest.param(nn.BCEWithLogitsLoss(pos_weight=torch.ones(C)), ("x", "p"), 10 * NC + NC + 1, id="BCEWithLogitsLoss"),
    pytest.param(nn.KLDivLoss(reduction="batchmean", log_target=True), ("x", "y"), 3 * NC + NC + 1, id="KLDivLoss"),
    pytest.param(nn.SoftMarginLoss(), ("x", "y"), 4 * NC + NC + 1, id="SoftMarginLoss"),
    pytest.param(nn.MarginRankingLoss(), ("a", "b", "sign"), 3 * N + N + 1, id="MarginRankingLoss"),
    pytest.param(nn.CosineEmbeddingLoss(), ("x", "y", "sign"), 6 * NC + 8 * N + N + 1, id="CosineEmbeddingLoss"),
]


class WithLoss(nn.Module):
    """The loss as a child, so its row is its own."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *inputs):
        return self.loss(*inputs)


@pytest.mark.parametrize(("loss", "names", "flops"), MODULE_CASES)
def test_loss_module_row_counts_its_function(loss, names, flops):
    assert REGISTRY.resolver().module_rule(type(loss)) is None  # traced, by decision
    v = tensors()
    result = profile(WithLoss(loss), inputs=tuple(v[n] for n in names), strict=True)
    row = result.layer("loss")
    assert (row.own.macs, row.own.flops, row.status) == (0, flops, "traced")
    assert (result.total_macs, result.total_flops) == (0, flops)


# --------------------------------------------------------------------------- a Hugging Face model's loss


def test_hugging_face_causal_lm_loss_is_counted():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with_loss = profile(model, kwargs={"input_ids": ids, "labels": ids}, strict=True)
    without = profile(model, kwargs={"input_ids": ids}, strict=True)
    # the labels shifted by one (padded with ignore_index): B*T targets over the vocabulary, a mean
    targets = 2 * 8
    assert with_loss.total_flops - without.total_flops == targets * 3 * 100 + targets + 1
    assert with_loss.total_macs == without.total_macs
