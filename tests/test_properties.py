"""Property tests: random models come back unchanged whatever happens, and counts match closed forms.

Hypothesis builds the cases; every expected number is a formula over the drawn configuration or
an oracle's value (``torch.utils.flop_counter.FlopCounterMode``, a brute-force window count).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
from dataclasses import dataclass
from math import prod

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules import module as module_globals

from conftest import assert_unchanged, counted, flop_counter_flops, snapshot
from profiler import CaptureError, RuleError, UncountedError, UncountedWarning, profile, profile_training

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the random models: [N, C, L] in, [N, C', L] out


@dataclass
class TripPlan:
    """When a :class:`Trip` raises: on call number ``at`` (never when None), raising ``error``."""

    error: BaseException | None = None
    at: int | None = None
    calls: int = 0


class Trip(nn.Module):
    """Runs its child if it has one, then raises its plan's error on the planned call."""

    def __init__(self, plan: TripPlan, child: nn.Module | None = None) -> None:
        super().__init__()
        self.plan = plan  # mutated between runs; the module's own attributes never change
        self.child = child

    def forward(self, x):
        self.plan.calls += 1
        y = x if self.child is None else self.child(x)
        if self.plan.calls == self.plan.at:
            raise self.plan.error
        return y


class Stack(nn.Module):
    """A custom container: its children in a ModuleList, called in order."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class Conv2dRow(nn.Module):
    """A Conv2d over [N, C, 1, L]: a (1, k) kernel along L."""

    def __init__(self, in_channels: int, out_channels: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, (1, k), padding=(0, k // 2))

    def forward(self, x):
        return self.conv(x.unsqueeze(2)).squeeze(2)


class SelfAttention(nn.Module):
    """MultiheadAttention across L, with C as the embedding."""

    def __init__(self, channels: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, bias=bias, batch_first=True)

    def forward(self, x):
        y = x.transpose(1, 2)
        return self.attn(y, y, y, need_weights=False)[0].transpose(1, 2)


CHANNELS = (2, 4, 6)
LEAF_KINDS = ("linear", "conv1d", "conv2d", "batchnorm", "layernorm", "relu", "gelu", "silu", "attention")
KINDS = LEAF_KINDS + ("stack", "shared", "trip")


@dataclass
class Built:
    """A random model, an input for it, and its trip."""

    model: nn.Module
    x: torch.Tensor
    trip: Trip
    trip_calls: int  # how many times one forward calls the trip


class _Builder:
    """Draws nested blocks on [N, C, L]; only leaf blocks that keep C are reused, and never the trip's holders."""

    def __init__(self, draw, length: int, plan: TripPlan) -> None:
        self.draw = draw
        self.length = length
        self.trip = Trip(plan, nn.Linear(length, length) if draw(st.booleans()) else None)
        self.trip_calls = 0
        self.reusable: list[tuple[int, nn.Module]] = []  # (channels, block) for shape-keeping leaf blocks

    def leaf(self, kind: str, c: int) -> tuple[nn.Module, int]:
        draw = self.draw
        if kind == "linear":
            block, out = nn.Linear(self.length, self.length, bias=draw(st.booleans())), c
        elif kind == "conv1d":
            out = draw(st.sampled_from(CHANNELS))
            k = draw(st.sampled_from((1, 3)))
            block = nn.Conv1d(c, out, k, padding=k // 2, bias=draw(st.booleans()))
        elif kind == "conv2d":
            out = draw(st.sampled_from(CHANNELS))
            block = Conv2dRow(c, out, draw(st.sampled_from((1, 3))))
        elif kind == "batchnorm":
            block, out = nn.BatchNorm1d(c), c
        elif kind == "layernorm":
            block, out = nn.LayerNorm(self.length), c
        elif kind == "attention":
            heads = draw(st.sampled_from([h for h in (1, 2, 3) if c % h == 0]))
            block, out = SelfAttention(c, heads, draw(st.booleans())), c
        else:
            block, out = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[kind](), c
        if out == c:
            self.reusable.append((c, block))
        return block, out

    def blocks(self, c: int, depth: int) -> tuple[list[nn.Module], int]:
        items = []
        for _ in range(self.draw(st.integers(1, 4))):
            kind = self.draw(st.sampled_from(KINDS if depth < 2 else LEAF_KINDS))
            shared = [block for channels, block in self.reusable if channels == c]
            if kind == "shared" and shared:
                items.append(self.draw(st.sampled_from(shared)))  # the same instance a second time
            elif kind == "trip" and self.trip_calls < 2:
                items.append(self.trip)
                self.trip_calls += 1
            elif kind == "stack":
                block, c = self.container(c, depth + 1)
                items.append(block)
            elif kind in LEAF_KINDS:
                block, c = self.leaf(kind, c)
                items.append(block)
        return items, c

    def container(self, c: int, depth: int) -> tuple[nn.Module, int]:
        items, c = self.blocks(c, depth)
        return (nn.Sequential(*items) if self.draw(st.booleans()) else Stack(items)), c


@st.composite
def random_models(draw) -> Built:
    """A random stack with frozen and eval-mode parts, shared modules and one Trip (used once or twice)."""
    length = draw(st.integers(2, 4))
    channels = draw(st.sampled_from(CHANNELS))
    builder = _Builder(draw, length, TripPlan())
    model, _ = builder.container(channels, 0)
    if builder.trip_calls == 0:
        model = nn.Sequential(model, builder.trip) if draw(st.booleans()) else Stack([builder.trip, model])
        builder.trip_calls = 1
    modules = list(model.modules())
    flags = st.lists(st.booleans(), min_size=len(modules), max_size=len(modules))
    model.train(draw(st.booleans()))
    for module, flip in zip(modules[1:], draw(flags)):  # e.g. an eval-mode BatchNorm in a training model
        if flip:
            module.train(not module.training)
    for module, freeze in zip(modules, draw(flags)):
        if freeze:
            module.requires_grad_(False)
    x = torch.randn(draw(st.integers(1, 2)), channels, length)
    return Built(model, x, builder.trip, builder.trip_calls)


FORWARD_HOOK_KINDS = ("forward", "pre", "forward_kwargs_always", "pre_kwargs")
HOOK_KINDS = FORWARD_HOOK_KINDS + ("backward", "backward_pre")


def register_user_hooks(draw, model: nn.Module) -> list[list]:
    """The user's hooks on random modules, each appending to its own list; returns the forward ones' lists."""
    logs = []
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.modules.linear.NonDynamicallyQuantizableLinear)):
            continue  # never called: Stack iterates its ModuleList, MultiheadAttention reads out_proj's weights
        for kind in sorted(draw(st.sets(st.sampled_from(HOOK_KINDS), max_size=2))):
            log: list = []
            if kind == "forward":
                module.register_forward_hook(lambda m, a, o, log=log: log.append(1))
            elif kind == "pre":
                module.register_forward_pre_hook(lambda m, a, log=log: log.append(1))
            elif kind == "forward_kwargs_always":
                module.register_forward_hook(
                    lambda m, a, k, o, log=log: log.append(1), with_kwargs=True, always_call=True
                )
            elif kind == "pre_kwargs":
                module.register_forward_pre_hook(lambda m, a, k, log=log: log.append(1), with_kwargs=True)
            elif kind == "backward":
                module.register_full_backward_hook(lambda m, gi, go: None)
            else:
                module.register_full_backward_pre_hook(lambda m, go: None)
            if kind in FORWARD_HOOK_KINDS:
                logs.append(log)
    return logs


def layer_label(name: str) -> str:
    """How messages name a layer: ``layer 'name'``, the root as the model."""
    return f"layer '{name}'" if name else "the model"


def labels(model: nn.Module, module: nn.Module) -> list[str]:
    """Every way messages may name ``module``: a shared module is named by the path of the call."""
    return [layer_label(name) for name, m in model.named_modules(remove_duplicate=False) if m is module]


def failing_layer(model: nn.Module, trip: Trip, call: int, covering: tuple | type) -> tuple[nn.Module, str]:
    """The layer that was running when ``trip`` raised on its ``call``-th call, with its name on
    that call's path: the outermost ancestor on the path whose type has a rule (the capture looks
    at nothing below it), else the trip. Nothing that holds the trip is shared, so that call's path
    is the call-th one in module order."""
    modules = dict(model.named_modules(remove_duplicate=False))
    path = [name for name, m in modules.items() if m is trip][call - 1].split(".")
    for i in range(len(path)):
        name = ".".join(path[:i])
        if covering and isinstance(modules[name], covering):
            return modules[name], name
    return trip, ".".join(path)


def no_work(module, inputs, output) -> int:
    """A thop-style custom rule: 0 MACs."""
    return 0


OUTCOMES = ("forward succeeds", "forward raises", "rule raises", "keyboard interrupt")


@pytest.mark.filterwarnings("error::profiler.UncountedWarning")
@pytest.mark.parametrize("outcome", OUTCOMES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_model_comes_back_unchanged(outcome, data):
    built = data.draw(random_models(), label="model")
    model, plan = built.model, built.trip.plan
    logs = register_user_hooks(data.draw, model)
    under_no_grad = data.draw(st.booleans(), label="under no_grad")
    custom_ops, seen, covering = None, [], ()
    if outcome != "rule raises" and data.draw(st.booleans(), label="a container type gets a rule"):
        # its subtree is then not watched, and the function mode is off the stack while it runs
        covering = data.draw(st.sampled_from((nn.Sequential, Stack)), label="container with a rule")
        custom_ops = {covering: no_work}
    if outcome in ("forward raises", "keyboard interrupt"):
        plan.error = ValueError("tripped") if outcome == "forward raises" else KeyboardInterrupt()
        plan.at = data.draw(st.integers(1, built.trip_calls), label="raising call")
    if outcome == "rule raises":
        types = sorted(
            {type(m) for m in model.modules()} - {nn.ModuleList, nn.modules.linear.NonDynamicallyQuantizableLinear},
            key=lambda t: t.__name__,
        )
        target = data.draw(st.sampled_from(types), label="type whose rule raises")

        def raising_rule(module, inputs, output):
            seen.append(module._parameters)  # the real module's dict, also through a stand-in
            raise ArithmeticError("rule broke")

        custom_ops = {target: raising_rule}
    before = snapshot(model)

    with torch.no_grad() if under_no_grad else contextlib.nullcontext():
        if outcome == "forward succeeds":
            profile(model, inputs=(built.x,), custom_ops=custom_ops)
        elif outcome == "forward raises":
            with pytest.raises(CaptureError) as info:
                profile(model, inputs=(built.x,), custom_ops=custom_ops)
            assert info.value.__cause__ is plan.error
            assert "ValueError" in str(info.value) and "tripped" in str(info.value)
            # which layer it names: test_capture_error_names_the_failing_layer
        elif outcome == "rule raises":
            with pytest.raises(RuleError) as info:
                profile(model, inputs=(built.x,), custom_ops=custom_ops)
            assert len(seen) == 1
            failed = next(m for m in model.modules() if m._parameters is seen[0])
            assert isinstance(info.value.__cause__, ArithmeticError)
            assert any(
                f"rule {raising_rule.__qualname__} failed on {label} ({type(failed).__name__})" in str(info.value)
                for label in labels(model, failed)
            )
        else:
            with pytest.raises(KeyboardInterrupt) as info:
                profile(model, inputs=(built.x,), custom_ops=custom_ops)
            assert info.value is plan.error
        assert_unchanged(model, before, grad_enabled=not under_no_grad)
    assert torch.is_grad_enabled()

    profiled_calls = [len(log) for log in logs]
    plan.at, plan.calls = None, 0
    model(built.x)  # a plain forward, the model's own modes, grad on
    assert all(len(log) > calls for log, calls in zip(logs, profiled_calls)), "a user hook no longer fires"
    if outcome == "forward succeeds":  # the profiled forward called the user's hooks as a plain one does
        assert [len(log) - calls for log, calls in zip(logs, profiled_calls)] == profiled_calls


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_capture_error_names_the_failing_layer(data):
    built = data.draw(random_models(), label="model")
    model, plan = built.model, built.trip.plan
    covering = data.draw(st.sampled_from(((), nn.Sequential, Stack)), label="container type with a rule")
    plan.error = ValueError("tripped")
    plan.at = data.draw(st.integers(1, built.trip_calls), label="raising call")
    with pytest.raises(CaptureError) as info:
        profile(model, inputs=(built.x,), custom_ops={covering: no_work} if covering else None)
    failed, name = failing_layer(model, built.trip, plan.at, covering)
    assert f"ValueError while running {layer_label(name)} ({type(failed).__name__})" in str(info.value)


class RaisesAfterItsChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Linear(2, 2)

    def forward(self, x):
        self.child(x)
        raise ValueError("after the child returned")


class Holder(nn.Module):
    """Calls its children in order; profiled with a custom rule, so nothing below it is looked at."""

    def __init__(self, *children: nn.Module) -> None:
        super().__init__()
        self.parts = nn.Sequential(*children)

    def forward(self, x):
        return self.parts(x)


def shared_linear_then_trip() -> nn.Module:
    linear = nn.Linear(2, 2)
    return nn.Sequential(linear, Holder(linear, Trip(TripPlan(ValueError("tripped"), 1))))


def shared_trip() -> nn.Module:
    """The trip passes at '0', then raises on its second call, inside the ruled Holder."""
    trip = Trip(TripPlan(ValueError("tripped"), 2))
    return nn.Sequential(trip, Holder(trip))


@pytest.mark.parametrize(
    ("model", "custom_ops", "expected"),
    [
        pytest.param(
            nn.Sequential(RaisesAfterItsChild()), None, "layer '0' (RaisesAfterItsChild)", id="child-returned",
        ),
        pytest.param(
            shared_linear_then_trip(), {Holder: no_work}, "layer '1' (Holder)", id="shared-module-in-ruled-one",
        ),
        pytest.param(
            shared_trip(), {Holder: no_work}, "layer '1' (Holder)", id="shared-module-raising-in-ruled-one",
        ),
    ],
)
def test_capture_error_names_the_running_layer(model, custom_ops, expected):
    with pytest.raises(CaptureError) as info:
        profile(model, inputs=(torch.randn(1, 2),), custom_ops=custom_ops)
    assert f"while running {expected}" in str(info.value)


class Square(nn.Module):
    """No rule; its ``x * x`` is counted by the function rule for mul."""

    def forward(self, x):
        return x * x


def test_shared_module_inside_a_ruled_one_is_not_uncounted():
    square = Square()
    model = nn.Sequential(square, Holder(square))
    x = torch.randn(1, 2)
    result = profile(model, inputs=(x,), custom_ops={Holder: no_work}, strict=True)
    assert result.uncounted == ()
    assert result.total_flops == x.numel()  # the one multiply per element outside Holder; Holder's rule says 0


@pytest.mark.parametrize("outcome", ["forward succeeds", "forward raises"])
def test_no_global_hook_flag_left_behind(outcome):
    """No ``with_kwargs`` flag left behind: torch's handle for a global forward hook does not remove it."""
    plan = TripPlan(ValueError("tripped"), 1 if outcome == "forward raises" else None)
    model = nn.Sequential(nn.Linear(2, 2), Trip(plan))
    flags = dict(module_globals._global_forward_hooks_with_kwargs)
    with pytest.raises(CaptureError) if outcome == "forward raises" else contextlib.nullcontext():
        profile(model, inputs=(torch.randn(1, 2),))
    assert dict(module_globals._global_forward_hooks_with_kwargs) == flags


# --- profile_training gives the model back: requires_grad that train() changes, another thread training


class TogglesInTraining(nn.Module):
    """A random model whose ``train(mode)`` also sets ``requires_grad``: the ``unfreeze`` parameters
    to ``mode`` (a backbone that training unfreezes), the ``freeze`` ones to ``not mode``. It keeps a
    counter buffer ``calls``; its forward adds one to the buffer named ``aliased`` (if any) through a
    reference taken at init, not through the module (a BatchNorm's statistics are written both ways)."""

    def __init__(self, body: nn.Module, unfreeze: list[nn.Parameter], freeze: list[nn.Parameter],
                 aliased: str | None = None) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.toggled = [(p, True) for p in unfreeze] + [(p, False) for p in freeze]  # a plain list: not registered
        self.aliased = aliased
        self.alias = [self.get_buffer(aliased)] if aliased else []

    def train(self, mode: bool = True):
        super().train(mode)
        for p, follows in self.toggled:
            p.requires_grad_(mode if follows else not mode)
        return self

    def forward(self, x):
        for buffer in self.alias:
            buffer.add_(1)
        return self.body(x)


class OtherThread:
    """A thread that trains ``model`` while the profile holds it: a forward before the profile,
    a whole step (forward, backward) when the profile's forward starts, that first forward's
    backward after it. ``rolled_back`` is what its step changed, as the profile names it."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.ready, self.inside, self.done, self.after = (threading.Event() for _ in range(4))
        self.errors: list[BaseException] = []
        self.rolled_back: set[str] = set()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        try:
            pending = self.model(self.x.detach().requires_grad_()).sum()
            self.ready.set()
            assert self.inside.wait(30)
            buffers, rng = {name: b.clone() for name, b in self.model.named_buffers()}, torch.get_rng_state()
            versions = [b._version for b in self.model.alias]  # the original, which the module no longer holds
            self.model(self.x.detach().requires_grad_()).sum().backward()
            self.rolled_back = {f"buffer {name!r}" for name, b in self.model.named_buffers()
                                if b.shape != buffers[name].shape or not torch.equal(b, buffers[name])}
            if [b._version for b in self.model.alias] != versions:  # written through the alias
                self.rolled_back.add(f"buffer {self.model.aliased!r}")
            if not torch.equal(torch.get_rng_state(), rng):
                self.rolled_back.add("the random state")
            # the profile set every .grad to None when it took the model: these are this thread's
            self.rolled_back |= {f"gradient of {name!r}" for name, p in self.model.named_parameters() if p.grad is not None}
            self.done.set()
            assert self.after.wait(30)
            if not self.model.alias:  # its own alias write invalidates a graph that saved the buffer, profile or not
                pending.backward()  # its graph from before the profile is still valid
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self.errors.append(exc)
            self.done.set()


def listed_after(text: str) -> set[str]:
    return set(text.split("rolled back that thread's work on ")[1].split("; ")[0].split(", "))


@pytest.mark.parametrize("outcome", ["forward succeeds", "forward raises"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_training_profile_gives_the_model_back(outcome, data):
    built = data.draw(random_models(), label="model")
    plan, params = built.trip.plan, list(built.model.parameters())
    roles = data.draw(st.lists(st.sampled_from(("unfreeze", "freeze", "keep")), min_size=len(params),
                               max_size=len(params)), label="what train() does to each parameter")
    buffers = ["calls", *(f"body.{name}" for name, _ in built.model.named_buffers())]
    aliased = data.draw(st.sampled_from([None, *buffers]), label="buffer written through an alias")
    model = TogglesInTraining(built.model, [p for p, r in zip(params, roles) if r == "unfreeze"],
                              [p for p, r in zip(params, roles) if r == "freeze"], aliased)
    for p in params:
        if data.draw(st.booleans(), label="has a gradient"):
            p.grad = torch.randn_like(p)
    other = OtherThread(model, built.x) if data.draw(st.booleans(), label="another thread trains") else None
    raising_call = data.draw(st.integers(1, built.trip_calls), label="raising call")

    def gate(module, args) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if other is not None:
            other.inside.set()
            assert other.done.wait(30)
        plan.calls = 0  # from here on, the profile's calls
        if outcome == "forward raises":
            plan.error, plan.at = ValueError("tripped"), raising_call

    model.register_forward_pre_hook(gate)
    x = built.x.detach().requires_grad_()  # a backward exists whatever train() freezes
    try:
        if other is not None:
            other.thread.start()
            assert other.ready.wait(30)
        before, grads = snapshot(model), [p.grad for p in params]
        with pytest.raises(CaptureError) if outcome == "forward raises" else contextlib.nullcontext() as info, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            profile_training(model, (x,))
        plan.at = None
        assert_unchanged(model, before)  # requires_grad included; the aliased buffer's values too
        assert all(b is model.get_buffer(model.aliased) for b in model.alias)  # the same object
        assert all(p.grad is g for p, g in zip(params, grads))
    finally:
        plan.at = None
        if other is not None:
            other.after.set()
            other.thread.join(30)
    if other is None:
        return
    assert not other.errors, other.errors
    if outcome == "forward raises":
        notes = getattr(info.value, "__notes__", [])
        assert (listed_after(notes[0]) if notes else set()) == other.rolled_back
    else:
        message = next(str(w.message) for w in caught if "another thread used the model" in str(w.message))
        if other.rolled_back:
            assert listed_after(message) == other.rolled_back
        else:
            assert "rolled back none of that thread's buffer updates, gradients or random draws" in message


# --- counts: closed forms and FlopCounterMode


def per_dim(draw, ndim: int, low: int, high: int) -> tuple[int | tuple[int, ...], tuple[int, ...]]:
    """A module argument drawn as one int or a tuple, and its value per spatial dimension."""
    if draw(st.booleans()):
        value = draw(st.integers(low, high))
        return value, (value,) * ndim
    values = tuple(draw(st.integers(low, high)) for _ in range(ndim))
    return values, values


CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSES = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


@st.composite
def convs(draw) -> tuple[nn.Module, torch.Tensor]:
    ndim = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel, kernels = per_dim(draw, ndim, 1, 3)
    dilation, dilations = per_dim(draw, ndim, 1, 2)
    if draw(st.booleans()):
        padding, stride = "same", 1
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernels, dilations)]
    else:
        padding, paddings = per_dim(draw, ndim, 0, 2)
        stride, _ = per_dim(draw, ndim, 1, 3)
        pads = [(p, p) for p in paddings]
    padding_mode = draw(st.sampled_from(("zeros", "reflect", "replicate", "circular")))
    sizes = []
    for k, d, (before, after) in zip(kernels, dilations, pads):
        low = max(1, d * (k - 1) + 1 - before - after)  # at least one output
        if padding_mode == "reflect":
            low = max(low, before + 1, after + 1)
        elif padding_mode == "circular":
            low = max(low, before, after)
        sizes.append(draw(st.integers(low, low + 2)))
    batch = (draw(st.integers(1, 2)),) if draw(st.booleans()) else ()
    layer = CONVS[ndim](
        in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias=draw(st.booleans()), padding_mode=padding_mode,
    )
    return layer, torch.randn(*batch, in_channels, *sizes)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@SETTINGS
@given(case=convs())
def test_conv_counts(case):
    layer, x = case
    out = layer(x)
    result = counted(layer, (x,))
    macs = out.numel() * (layer.in_channels // layer.groups) * prod(layer.kernel_size)
    assert result.total_macs == macs
    assert result.total_flops == 2 * macs
    assert result.matmul_flops == flop_counter_flops(layer, (x,))


@st.composite
def conv_transposes(draw) -> tuple[nn.Module, torch.Tensor]:
    ndim = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel, kernels = per_dim(draw, ndim, 1, 3)
    stride, strides = per_dim(draw, ndim, 1, 3)
    dilation, dilations = per_dim(draw, ndim, 1, 2)
    padding, paddings = per_dim(draw, ndim, 0, 2)
    # output padding must be smaller than the stride or the dilation
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilations))
    sizes = []
    for k, s, d, p, op in zip(kernels, strides, dilations, paddings, output_padding):
        low = next(n for n in itertools.count(1) if (n - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1)
        sizes.append(draw(st.integers(low, low + 2)))
    batch = (draw(st.integers(1, 2)),) if draw(st.booleans()) else ()
    layer = CONV_TRANSPOSES[ndim](
        in_channels, out_channels, kernel, stride=stride, padding=padding, output_padding=output_padding,
        groups=groups, bias=draw(st.booleans()), dilation=dilation,
    )
    return layer, torch.randn(*batch, in_channels, *sizes)


@SETTINGS
@given(case=conv_transposes())
def test_conv_transpose_counts(case):
    layer, x = case
    result = counted(layer, (x,))
    macs = x.numel() * (layer.out_channels // layer.groups) * prod(layer.kernel_size)
    assert result.total_macs == macs
    assert result.total_flops == 2 * macs
    assert result.matmul_flops == flop_counter_flops(layer, (x,))


@SETTINGS
@given(
    in_features=st.integers(1, 5),
    out_features=st.integers(1, 5),
    leading=st.lists(st.integers(1, 3), max_size=3),
    bias=st.booleans(),
)
def test_linear_counts(in_features, out_features, leading, bias):
    layer = nn.Linear(in_features, out_features, bias=bias)
    x = torch.randn(*leading, in_features)
    out = layer(x)
    result = counted(layer, (x,))
    assert result.total_macs == out.numel() * in_features
    assert result.total_flops == 2 * out.numel() * in_features
    assert result.matmul_flops == flop_counter_flops(layer, (x,))


def clipped_window_total(in_spatial, out_spatial, kernels, strides, paddings) -> int:
    """By brute force: over every output position, the size of its window clipped to the input."""
    total = 0
    for index in itertools.product(*(range(n) for n in out_spatial)):
        volume = 1
        for i, size, k, s, p in zip(index, in_spatial, kernels, strides, paddings):
            start = i * s - p
            volume *= len(range(max(start, 0), min(start + k, size)))
        total += volume
    return total


@st.composite
def pools(draw, kinds: dict[int, type], ceil_mode: bool | None = None) -> tuple[nn.Module, torch.Tensor, tuple]:
    ndim = draw(st.integers(1, 2))
    kernel, kernels = per_dim(draw, ndim, 1, 4)
    if draw(st.booleans()):
        stride, strides = None, kernels
    else:
        stride, strides = per_dim(draw, ndim, 1, 3)
    if draw(st.booleans()):
        padding = draw(st.integers(0, min(kernels) // 2))
        paddings = (padding,) * ndim
    else:
        paddings = tuple(draw(st.integers(0, k // 2)) for k in kernels)
        padding = paddings
    sizes = [draw(st.integers(max(1, k - 2 * p), max(1, k - 2 * p) + 4)) for k, p in zip(kernels, paddings)]
    batch = (draw(st.integers(1, 2)),) if draw(st.booleans()) else ()
    ceil = draw(st.booleans()) if ceil_mode is None else ceil_mode
    options = {"count_include_pad": draw(st.booleans())} if kinds is AVG_POOLS else {}
    layer = kinds[ndim](kernel, stride=stride, padding=padding, ceil_mode=ceil, **options)
    x = torch.randn(*batch, draw(st.integers(1, 3)), *sizes)
    return layer, x, (kernels, strides, paddings)


AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d}
MAX_POOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d}


@SETTINGS
@given(case=pools(AVG_POOLS))
def test_avg_pool_counts(case):
    layer, x, (kernels, strides, paddings) = case
    ndim = len(kernels)
    out = layer(x)
    planes = prod(x.shape[:-ndim])  # N * C, or C unbatched
    windows = planes * clipped_window_total(x.shape[-ndim:], out.shape[-ndim:], kernels, strides, paddings)
    result = counted(layer, (x,))
    assert result.total_macs == windows + out.numel()
    assert result.total_flops == windows


@SETTINGS
@given(case=pools(MAX_POOLS, ceil_mode=True))
def test_max_pool_is_free(case):
    layer, x, _ = case
    result = counted(layer, (x,))
    assert (result.total_macs, result.total_flops) == (0, 0)


@st.composite
def attentions(draw) -> tuple[nn.Module, tuple, dict, tuple[int, ...]]:
    heads, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    e = heads * head_dim
    self_attention = draw(st.booleans())
    kdim = e if self_attention else draw(st.integers(1, 5))
    vdim = e if self_attention else draw(st.integers(1, 5))
    batch_first = draw(st.booleans())
    batched = draw(st.booleans())
    n = draw(st.integers(1, 3)) if batched else 1
    q_len = draw(st.integers(1, 4))
    kv_len = q_len if self_attention else draw(st.integers(1, 4))
    layer = nn.MultiheadAttention(e, heads, bias=draw(st.booleans()), kdim=kdim, vdim=vdim, batch_first=batch_first)

    def shape(length: int, dim: int) -> tuple[int, ...]:
        if not batched:
            return length, dim
        return (n, length, dim) if batch_first else (length, n, dim)

    query = torch.randn(shape(q_len, e))
    if self_attention:
        inputs = (query, query, query)  # one tensor: the packed in-projection
    else:
        inputs = (query, torch.randn(shape(kv_len, kdim)), torch.randn(shape(kv_len, vdim)))
    kwargs = {"need_weights": draw(st.booleans())}
    return layer, inputs, kwargs, (n, q_len, kv_len, e, kdim, vdim)


@SETTINGS
@given(case=attentions())
def test_multihead_attention_counts(case):
    layer, inputs, kwargs, (n, L, S, E, kdim, vdim) = case
    result = counted(layer, inputs, kwargs)
    projections = L * n * E * E + S * n * kdim * E + S * n * vdim * E + L * n * E * E  # q, k, v, out
    assert result.total_macs == projections + 2 * n * L * S * E  # + scores and weighted sum
    assert result.matmul_flops == flop_counter_flops(layer, inputs, kwargs)


# --- strict=True: invisible work and functions without a rule


class ListOut(nn.Module):
    """A leaf that calls no torch function and returns a list: whatever it does is invisible."""

    def forward(self, x):
        return [x, x]


class Spectrum(nn.Module):
    """Calls a floating-point torch function whose aten operator has no rule."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x):
        for _ in range(self.times):
            x = torch.fft.fft(x).real
        return x


class Uncountable(nn.Module):
    """A Linear, then ListOut ``list_calls`` times, then Spectrum calling ``fft`` ``fft_calls`` times."""

    def __init__(self, list_calls: int, fft_calls: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.split = ListOut()
        self.spectrum = Spectrum(fft_calls)
        self.list_calls = list_calls

    def forward(self, x):
        x = self.linear(x)
        for _ in range(self.list_calls):
            x = self.split(x)[0]
        return self.spectrum(x)


@settings(max_examples=20, deadline=None)
@given(list_calls=st.integers(1, 3), fft_calls=st.integers(1, 3), strict=st.booleans(), train=st.booleans())
def test_strict_lists_every_uncounted_type_and_function(list_calls, fft_calls, strict, train):
    model = Uncountable(list_calls, fft_calls).train(train)
    before = snapshot(model)
    function = "aten._fft_r2c"  # torch.fft.fft has no rule; its aten operator has none either
    expected = [f"ListOut ×{list_calls}", f"{function} ×{fft_calls}"]
    x = torch.randn(2, 3)
    if strict:
        with pytest.raises(UncountedError) as info:
            profile(model, inputs=(x,), strict=True)
        message = str(info.value)
        assert f"module ListOut ×{list_calls} (in 'split')" in message
        assert f"function {function} ×{fft_calls} (in 'spectrum')" in message
    else:
        with pytest.warns(UncountedWarning) as warned:
            result = profile(model, inputs=(x,))
        assert len(warned) == 1
        assert all(part in str(warned[0].message) for part in expected)
        assert {(u.kind, u.name, u.calls, u.layers) for u in result.uncounted} == {
            ("module", "ListOut", list_calls, ("split",)),
            ("function", function, fft_calls, ("spectrum",)),
        }
        assert result.total_macs == x.shape[0] * model.linear.out_features * model.linear.in_features
    assert_unchanged(model, before)
