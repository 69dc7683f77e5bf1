"""The zoo: real torchvision models and small RNNs against thop, FlopCounterMode and parameter sums.

Per layer, our MACs equal thop's for every leaf layer thop counts, except where thop's formula is
wrong; each such case is listed in :data:`THOP_ERRORS` with the reason and the analytic truth,
which our number must equal. Layers thop does not count at all but we do are listed in
:data:`THOP_MISSES`. The totals then decompose exactly:
``ours == thop + documented per-layer differences + MACs of layers thop misses``, so any new,
unexplained difference fails a test. ``matmul_flops`` equals FlopCounterMode's total exactly.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from math import prod

import pytest
import thop
import torch
import torchvision
from thop.profile import register_hooks as THOP_RULES
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from profiler import Layer, ProfileResult, profile
from profiler.render import rows
from conftest import assert_tree_invariant

tv = torchvision.models


class LSTMNet(nn.Module):
    """A two-layer LSTM over [T, B, 32] and a linear head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(32, 64, num_layers=2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[-1])


class GRUNet(nn.Module):
    """A two-layer bidirectional GRU over [B, T, 32] and a linear head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(32, 48, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * 48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


# name: (constructor, input shape); fcn and vgg run at 128 for speed (and 128 gives vgg's
# AdaptiveAvgPool2d a 4x4 -> 7x7 map, thop error (d))
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (lambda: tv.resnet18(weights=None), (1, 3, 224, 224)),
    "resnet50": (lambda: tv.resnet50(weights=None), (1, 3, 224, 224)),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None), (1, 3, 224, 224)),
    "mobilenet_v3_large": (lambda: tv.mobilenet_v3_large(weights=None), (1, 3, 224, 224)),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(weights=None), (1, 3, 224, 224)),
    "densenet121": (lambda: tv.densenet121(weights=None), (1, 3, 224, 224)),
    "vgg11_bn": (lambda: tv.vgg11_bn(weights=None), (1, 3, 128, 128)),
    "squeezenet1_0": (lambda: tv.squeezenet1_0(weights=None), (1, 3, 224, 224)),
    "shufflenet_v2_x1_0": (lambda: tv.shufflenet_v2_x1_0(weights=None), (1, 3, 224, 224)),
    "regnet_y_400mf": (lambda: tv.regnet_y_400mf(weights=None), (1, 3, 224, 224)),
    "convnext_tiny": (lambda: tv.convnext_tiny(weights=None), (1, 3, 224, 224)),
    "fcn_resnet50": (
        lambda: tv.segmentation.fcn_resnet50(weights=None, weights_backbone=None),
        (1, 3, 128, 128),
    ),
    "lstm": (LSTMNet, (12, 4, 32)),
    "gru_bidirectional": (GRUNet, (4, 12, 32)),
}


# --- the analytic truth where thop is wrong ---------------------------------------------------


def avg_pool_truth(module: nn.Module, layer: Layer) -> int:
    # [N, C, *S_out] = avg_pool(...): per output, prod(kernel) additions and one division
    k = module.kernel_size
    window = prod(k) if isinstance(k, tuple) else k ** (len(layer.output_shapes[0]) - 2)
    return layer.calls * prod(layer.output_shapes[0]) * (window + 1)


def adaptive_windows(in_size: int, out_size: int) -> list[int]:
    """Window lengths of adaptive pooling along one dimension, as ATen computes them."""
    # window i spans [floor(i * in / out), ceil((i + 1) * in / out))
    return [-(-(i + 1) * in_size // out_size) - i * in_size // out_size for i in range(out_size)]


def adaptive_avg_pool_truth(module: nn.Module, layer: Layer) -> int:
    # per output, its window's additions and one division; windows overlap when in < out
    (in_shape,), (out_shape,) = layer.input_shapes, layer.output_shapes
    planes = prod(out_shape[:2])
    window_total = planes * prod(sum(adaptive_windows(i, o)) for i, o in zip(in_shape[2:], out_shape[2:]))
    return layer.calls * (window_total + prod(out_shape))


def affine_norm_truth(module: nn.Module, layer: Layer) -> int:
    # thop's LayerNorm count, which its subclass should get: 2 per input element, doubled if affine
    return layer.calls * prod(layer.input_shapes[0]) * 2 * (2 if module.elementwise_affine else 1)


@dataclass(frozen=True)
class Explained:
    reason: str
    truth: Callable[[nn.Module, Layer], int]


AVG_POOL = "(c) thop's AvgPool ignores the window: 1 per output element instead of prod(kernel) + 1"
ADAPTIVE = "(d) thop's AdaptiveAvgPool takes a float kernel in/out, wrong when the sizes do not divide"
SUBCLASS = "(g) thop looks up exact types only, so LayerNorm2d(nn.LayerNorm) gets 0 MACs and 0 params"
NO_RULE_PARAMS = "(i) thop misses the parameters of modules without a rule (CNBlock.layer_scale)"

# (model, layer type) -> why thop's number for a layer type it counts is wrong, and the truth
THOP_ERRORS: dict[tuple[str, str], Explained] = {
    ("densenet121", "AvgPool2d"): Explained(AVG_POOL, avg_pool_truth),
    ("vgg11_bn", "AdaptiveAvgPool2d"): Explained(ADAPTIVE, adaptive_avg_pool_truth),
}

# (model, layer type) -> layers thop does not count at all (0 MACs) to which we give MACs
THOP_MISSES: dict[tuple[str, str], Explained] = {
    ("convnext_tiny", "LayerNorm2d"): Explained(SUBCLASS, affine_norm_truth),
}

# (model, owning module type) -> (why thop misses these parameters, how many)
THOP_MISSED_PARAMS: dict[tuple[str, str], tuple[str, int]] = {
    # layer_scale [dim, 1, 1] on each block: 3, 3, 9 and 3 blocks of 96, 192, 384 and 768 channels
    ("convnext_tiny", "CNBlock"): (NO_RULE_PARAMS, 3 * 96 + 3 * 192 + 9 * 384 + 3 * 768),
    # weight and bias: the stem, the three downsamplings and the classifier's norm
    ("convnext_tiny", "LayerNorm2d"): (SUBCLASS, 2 * (96 + 96 + 192 + 384 + 768)),
}


# --- one model, profiled three ways, built once per module -------------------------------------


def _as_int(value: float) -> int:
    assert value == int(value), f"thop returned a non-integral count {value}"
    return int(value)


@dataclass
class ZooCase:
    name: str
    model: nn.Module
    x: torch.Tensor

    @cached_property
    def ours(self) -> ProfileResult:
        return profile(self.model, (self.x,))

    @cached_property
    def thop(self) -> tuple[int, int, dict]:
        # on a copy: thop registers buffers on the model (and leaves some behind)
        macs, params, info = thop.profile(
            copy.deepcopy(self.model), inputs=(self.x,), verbose=False, ret_layer_info=True
        )
        return _as_int(macs), _as_int(params), info

    @cached_property
    def fcm_flops(self) -> int:
        # grad enabled (FlopCounterMode's setting), eval mode; the MATH backend, since fused SDPA
        # kernels count 0 on CPU; and no mkldnn, whose RNN kernel counts 0
        self.model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # mkldnn.flags' TF32 note
            with (
                sdpa_kernel(SDPBackend.MATH),
                torch.backends.mkldnn.flags(enabled=False),
                FlopCounterMode(display=False) as counter,
            ):
                self.model(self.x)
        return counter.get_total_flops()

    def thop_leaves(self) -> Iterator[tuple[str, nn.Module, int]]:
        """(dotted name, module, thop's MACs) of each leaf layer thop counts, in its dict's order."""

        def visit(info: dict, prefix: str) -> Iterator[tuple[str, nn.Module, int]]:
            for key, (macs, _params, children) in info.items():
                name = prefix + key
                module = self.model.get_submodule(name)
                if _thop_counts(module):
                    yield name, module, _as_int(macs)
                yield from visit(children, name + ".")

        return visit(self.thop[2], "")


def _thop_counts(module: nn.Module) -> bool:
    """True when thop has a rule for ``module``'s exact type (``nn.Sequential``'s is a no-op)."""
    return type(module) in THOP_RULES and type(module) is not nn.Sequential


@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request) -> ZooCase:
    build, shape = ZOO[request.param]
    torch.manual_seed(0)
    model = build().eval()
    return ZooCase(request.param, model, torch.rand(shape))


# --- 1. per-layer MACs against thop ------------------------------------------------------------


def test_layer_macs_equal_thops_or_a_documented_thop_error(zoo):
    unexplained = []
    errors_seen = set()
    for name, module, thop_macs in zoo.thop_leaves():
        layer = zoo.ours.layer(name)
        key = (zoo.name, type(module).__name__)
        if key in THOP_ERRORS:
            explained = THOP_ERRORS[key]
            assert layer.total.macs == explained.truth(module, layer), f"{name}: {explained.reason}"
            if layer.total.macs != thop_macs:
                errors_seen.add(key)
        elif layer.total.macs != thop_macs:
            unexplained.append((name, key[1], f"thop {thop_macs}", f"ours {layer.total.macs}"))
    assert unexplained == []
    # every documented error happens: no stale entries
    assert errors_seen == {key for key in THOP_ERRORS if key[0] == zoo.name}


def test_layers_thop_does_not_count_are_documented(zoo):
    leaves = {name for name, _, _ in zoo.thop_leaves()}
    unexplained = []
    misses_seen = set()
    for layer in zoo.ours.layers:
        if layer.name in leaves or layer.own.macs == 0:
            continue
        key = (zoo.name, layer.type)
        if key in THOP_MISSES:
            explained = THOP_MISSES[key]
            assert layer.own.macs == explained.truth(zoo.model.get_submodule(layer.name), layer), (
                f"{layer.name}: {explained.reason}"
            )
            misses_seen.add(key)
        else:
            unexplained.append((layer.name, layer.type, layer.own.macs))
    assert unexplained == []
    assert misses_seen == {key for key in THOP_MISSES if key[0] == zoo.name}


def test_total_macs_decompose_into_thops_and_documented_differences(zoo):
    thop_total = zoo.thop[0]
    leaves = {name: (module, macs) for name, module, macs in zoo.thop_leaves()}
    documented = sum(
        zoo.ours.layer(name).total.macs - macs
        for name, (module, macs) in leaves.items()
        if (zoo.name, type(module).__name__) in THOP_ERRORS
    )
    missed = sum(
        layer.own.macs
        for layer in zoo.ours.layers
        if layer.name not in leaves and (zoo.name, layer.type) in THOP_MISSES
    )
    assert zoo.ours.total_macs == thop_total + documented + missed


# --- 2. matmul FLOPs against FlopCounterMode ---------------------------------------------------


def test_matmul_flops_equal_flop_counter_mode(zoo):
    assert zoo.ours.matmul_flops == zoo.fcm_flops


# --- 3. parameters -----------------------------------------------------------------------------


def test_params_equal_the_models_parameters(zoo):
    assert zoo.ours.total_params == sum(p.numel() for p in zoo.model.parameters())


def test_thop_params_miss_only_documented_owners(zoo):
    # thop adds the parameters of modules it has a rule for; others' own parameters it misses
    missed: dict[str, int] = defaultdict(int)
    for module in zoo.model.modules():
        if not _thop_counts(module):
            own = sum(p.numel() for p in module.parameters(recurse=False))
            if own:
                missed[type(module).__name__] += own
    expected = {key[1]: n for key, (_, n) in THOP_MISSED_PARAMS.items() if key[0] == zoo.name}
    assert dict(missed) == expected
    assert zoo.thop[1] == zoo.ours.total_params - sum(expected.values())


class SharedAndTied(nn.Module):
    """One Linear registered under two parents (and called by each), and a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(8, 8)
        self.a = nn.Sequential(shared, nn.ReLU())
        self.b = nn.Sequential(shared, nn.ReLU())
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.scale = nn.Parameter(torch.ones(8))  # on a module thop has no rule for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(self.b(self.a(x)))) * self.scale


def test_shared_module_and_tied_parameter_count_once():
    model, x = SharedAndTied(), torch.rand(3, 8)
    call = 3 * 8 * 8  # one Linear(8, 8) call on [3, 8]
    linear = 8 * 8 + 8  # one Linear(8, 8)'s weight and bias
    ours = profile(model, (x,))
    thop_macs, thop_params = thop.profile(copy.deepcopy(model), inputs=(x,), verbose=False)

    # each call goes to the parent that made it; the parameters stay with the first name
    assert ours.layer("a.0").calls == ours.layer("b.0").calls == 1
    assert ours.layer("a").total.macs == ours.layer("b").total.macs == call
    assert (ours.layer("a.0").own_params, ours.layer("b.0").own_params) == (linear, 0)
    assert ours.total_macs == (2 + 1 + 1) * call  # the shared layer's two calls, enc, dec
    # (j) thop's model.apply reaches the shared layer once per parent and hooks it each time, so
    # each of its 2 calls counts twice; its nested dict then lists it under both parents
    assert thop_macs == (2 * 2 * 2 + 1 + 1) * call
    # shared, enc, dec's bias (its weight is enc's), scale
    assert ours.total_params == sum(p.numel() for p in model.parameters()) == 2 * linear + 8 + 8
    # (j) the shared layer once per parent, the tied weight twice, and (i) scale missed
    assert thop_params == 2 * linear + linear + linear


# --- 4. the tree and its table -----------------------------------------------------------------


def test_tree_invariant_and_tables_render(zoo):
    root = zoo.ours.root
    assert_tree_invariant(root)
    assert zoo.ours.uncounted == ()
    deepest = max(layer.depth for layer in zoo.ours.layers)
    for depth in (None, deepest):
        table = zoo.ours.table(depth=depth)
        if depth is not None:
            assert len(table.splitlines()) >= sum(1 for _ in rows(root, depth))
