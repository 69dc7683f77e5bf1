"""profile_training's inputs and outputs: the caller's containers reach the forward untouched, the
backward stops at the model's inputs without replacing them (an in-place operation on an input, a
loss differentiating with respect to one), tensors are found in any container the model returns; a
training result's roofline is still a training result; parameters sharing a storage.

The oracle for a step is FlopCounterMode around the model's forward, the loss and
``torch.autograd.backward(loss, inputs=[*parameters, *inputs])``: the backward of the model only,
not of the graph that made its inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import types
import warnings
from typing import Any, NamedTuple

import pytest
import torch
import torch.utils.checkpoint
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import assert_unchanged, snapshot
from hooks import tensors_in
from hooks.backward import LossError
from profiler import RooflineResult, TrainingResult, TrainingRoofline, profile_training
from profiler.training import default_loss, training_summary


def oracle_matmul(model: nn.Module, call, loss=default_loss, inputs: tuple[torch.Tensor, ...] | None = ()) -> int:
    """FlopCounterMode's FLOPs for ``call()``, ``loss`` and the backward down to the parameters and
    ``inputs`` (``None``: a plain backward, for inputs that are leaves)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False) as counter:
        torch.autograd.backward(loss(call()), inputs=None if inputs is None else [*params, *inputs])
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def step_matmul(result: TrainingResult) -> int:
    return result.matmul_flops + result.backward_matmul_flops


def made_upstream(upstream: nn.Module, rows: int = 3) -> torch.Tensor:
    """An input that another model made: it requires grad and is not a leaf."""
    return upstream(torch.rand(rows, 8))


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------- inputs in the caller's containers


class Named(NamedTuple):
    x: torch.Tensor
    scale: float


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: torch.Tensor
    scale: float = 2.0
    double: float = dataclasses.field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "double", 2 * self.scale)


class Attributed(dict):
    """A batch as some data loaders give it: a dict with attributes."""


class Items(list):
    """A list subclass with an attribute."""


def defaultdict_batch(x):
    batch = collections.defaultdict(lambda: None)
    batch["x"] = x
    return batch


def attributed_batch(x):
    batch = Attributed(x=x)
    batch.scale = 3.0
    return batch


def items_batch(x):
    batch = Items([x])
    batch.scale = 3.0
    return batch


def nested_batch(x):
    return {"inputs": [Named(x, 1.0)], "extra": (Frozen(x),)}


def read(batch) -> torch.Tensor:
    """What each model below reads of its batch: only what the caller's own type provides."""
    if isinstance(batch, collections.defaultdict):
        assert batch["mask"] is None  # a plain dict raises KeyError here
        return batch["x"]
    if isinstance(batch, Attributed):
        return batch["x"] * batch.scale
    if isinstance(batch, collections.UserDict):
        return batch.data["x"]
    if isinstance(batch, Named):
        return batch.x * batch.scale
    if isinstance(batch, Frozen):
        return batch.x * batch.double
    if isinstance(batch, Items):
        return batch[0] * batch.scale
    return read(batch["inputs"][0]) + read(batch["extra"][0])


class OnBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.received: list[Any] = []

    def forward(self, batch):
        self.received.append(batch)
        return self.fc(read(batch))


BATCHES = [
    pytest.param(defaultdict_batch, id="defaultdict"),
    pytest.param(attributed_batch, id="dict-subclass-with-attributes"),
    pytest.param(lambda x: collections.UserDict(x=x), id="UserDict"),
    pytest.param(lambda x: Named(x, 2.0), id="namedtuple"),
    pytest.param(Frozen, id="frozen-dataclass-with-non-init-field"),
    pytest.param(items_batch, id="list-subclass"),
    pytest.param(nested_batch, id="nested"),
]


class TestInputContainers:
    @pytest.mark.parametrize("make", BATCHES)
    @pytest.mark.parametrize("by_keyword", [False, True], ids=["positional", "keyword"])
    def test_the_forward_gets_the_caller_s_object_and_the_backward_stops_at_its_tensors(self, make, by_keyword,
                                                                                         no_warnings):
        torch.manual_seed(0)
        model, upstream = OnBatch(), nn.Linear(8, 8)
        batch = make(made_upstream(upstream))
        before = snapshot(model)
        if by_keyword:
            result = profile_training(model, kwargs={"batch": batch})
        else:
            result = profile_training(model, (batch,))
        assert model.received.pop() is batch  # the very object: its type, attributes and defaults
        assert upstream.weight.grad is None and upstream.bias.grad is None  # the graph that made x did not run
        assert step_matmul(result) == oracle_matmul(model, lambda: model(batch), inputs=(batch_x(batch),))
        # the forward's matmul, then the weight's and the input's gradients
        assert result.backward_matmul_flops == 2 * (2 * 3 * 8 * 4)
        model.received.clear()
        assert_unchanged(model, before)

    def test_profile_passes_containers_through_too(self):
        from profiler import profile

        model = OnBatch()
        for param in BATCHES:
            batch = param.values[0](torch.rand(3, 8))
            result = profile(model, (batch,))
            assert model.received.pop() is batch
            assert result.total_macs == 3 * 8 * 4


def batch_x(batch) -> torch.Tensor:
    """The one tensor every batch above carries (nested ones carry it twice)."""
    (x,) = {id(t): t for t in tensors_in(batch)}.values()
    return x


# --------------------------------------------------------------- inputs that require grad


class InPlace(nn.Module):
    """Scales its input in place, as legal training code may on an input that is not a leaf."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x.mul_(2)
        return self.fc(x)


def penalised(x: torch.Tensor):
    """A loss with an input-gradient penalty: differentiates the output with respect to ``x``."""

    def loss(out):
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return out.sum() + grad.pow(2).sum()

    return loss


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


class TestInputsThatRequireGrad:
    def test_an_in_place_operation_on_an_input_made_upstream(self, no_warnings):
        torch.manual_seed(0)
        model, upstream = InPlace(), nn.Linear(8, 8)
        result = profile_training(model, (made_upstream(upstream),))
        assert upstream.weight.grad is None
        x = made_upstream(upstream)
        assert step_matmul(result) == oracle_matmul(model, lambda: model(x), inputs=(x,))
        assert result.matmul_flops == 2 * 3 * 8 * 4
        assert result.backward_matmul_flops == 2 * (2 * 3 * 8 * 4)

    def test_an_in_place_operation_on_a_view_made_upstream(self, no_warnings):
        """The view's base gets the in-place operation's history: the backward stops there too."""
        torch.manual_seed(0)
        model, upstream = InPlace(), nn.Linear(8, 16)
        result = profile_training(model, (made_upstream(upstream)[:, :8],))
        assert upstream.weight.grad is None
        x = made_upstream(upstream)[:, :8]
        assert step_matmul(result) == oracle_matmul(model, lambda: model(x), inputs=(x,)) == 3 * (2 * 3 * 8 * 4)

    @pytest.mark.parametrize("leaf", [True, False], ids=["leaf", "made-upstream"])
    def test_a_loss_differentiating_with_respect_to_the_input(self, leaf, no_warnings):
        model, base = mlp(), torch.rand(5, 8, requires_grad=True)
        x = base if leaf else base * 2
        result = profile_training(model, (x,), loss=penalised(x))
        assert base.grad is None  # the caller's leaf is left as it was
        # FlopCounterMode's module tracker cannot follow autograd.grad to a leaf: the oracle's input is made
        other = torch.rand(5, 8, requires_grad=True) * 2
        assert step_matmul(result) == oracle_matmul(model, lambda: model(other), penalised(other), inputs=(other,))
        plain = profile_training(model, (x.detach(),))
        assert step_matmul(result) > step_matmul(plain)  # the penalty's double backward is counted

    def test_a_leaf_input_keeps_its_gradient(self, no_warnings):
        model, x = mlp(), torch.rand(5, 8, requires_grad=True)
        x.grad = grad = torch.full((5, 8), 7.0)
        result = profile_training(model, (x,))
        assert x.grad is grad and torch.equal(grad, torch.full((5, 8), 7.0))
        other = torch.rand(5, 8, requires_grad=True)
        assert step_matmul(result) == oracle_matmul(model, lambda: model(other), inputs=(other,))

    def test_an_input_retaining_its_gradient_keeps_none(self, no_warnings):
        model = mlp()
        x = torch.rand(5, 8, requires_grad=True) * 2
        x.retain_grad()
        profile_training(model, (x,))
        assert x.grad is None

    def test_an_input_whose_graph_an_earlier_backward_freed(self, no_warnings):
        model, upstream = nn.Linear(8, 4), nn.Sequential(nn.Linear(8, 8), nn.GELU())
        x = made_upstream(upstream)
        x.sum().backward()  # the graph that made x is freed: only the model's backward can run
        upstream.zero_grad(set_to_none=True)
        result = profile_training(model, (x.detach().requires_grad_(),))  # the same input, with no graph behind it
        freed = profile_training(model, (x,))
        assert freed.backward_matmul_flops == result.backward_matmul_flops == 2 * (2 * 3 * 8 * 4)
        assert upstream[0].weight.grad is None


    @pytest.mark.parametrize("reentrant", [False, True], ids=["checkpoint", "reentrant-checkpoint"])
    def test_a_checkpointed_model_given_an_input_made_upstream(self, reentrant):
        torch.manual_seed(0)
        model, upstream = Checkpointed(reentrant), nn.Linear(8, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            expected = profile_training(model, (made_upstream(upstream).detach().requires_grad_(),))
        # a reentrant checkpoint refuses a backward that stops: the graph that made x runs, not counted, and says so
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = profile_training(model, (made_upstream(upstream),))
        assert [str(w.message) for w in caught if "reentrant checkpoint" in str(w.message)] != [] if reentrant \
            else caught == []
        assert upstream.weight.grad is None and upstream.bias.grad is None
        assert result.to_dict() == expected.to_dict()
        leaf = made_upstream(upstream).detach().requires_grad_()  # a reentrant checkpoint takes no inputs=
        assert step_matmul(result) == oracle_matmul(model, lambda: model(leaf), inputs=None)


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.out = nn.Linear(8, 2)
        self.reentrant = reentrant

    def forward(self, x):
        return self.out(x + torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=self.reentrant))


# --------------------------------------------------------------- outputs in containers


@dataclasses.dataclass
class Out:
    y: torch.Tensor
    z: torch.Tensor | None = None
    steps: int = 0


class Frame(dict):
    pass


class Pair(NamedTuple):
    y: torch.Tensor
    z: torch.Tensor


class TwoHeads(nn.Module):
    """A trunk and two heads: a loss that misses a head's output misses its whole backward."""

    def __init__(self, wrap):
        super().__init__()
        self.trunk, self.head1, self.head2 = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 2)
        self.wrap = wrap

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.wrap(self.head1(h), self.head2(h))


OUTPUTS = [
    pytest.param(lambda y, z: Out(y, z), id="dataclass"),
    pytest.param(lambda y, z: {"a": [Out(y)], "b": (z, torch.arange(3))}, id="nested-dict-list-dataclass"),
    pytest.param(lambda y, z: Out(y, Out(z, None)), id="dataclass-in-dataclass"),
    pytest.param(lambda y, z: Frame(y=y, z=z), id="dict-subclass"),
    pytest.param(lambda y, z: collections.UserDict(y=y, z=[z]), id="UserDict"),
    pytest.param(Pair, id="namedtuple"),
]


class TestOutputContainers:
    @pytest.mark.parametrize("wrap", OUTPUTS)
    def test_the_default_loss_sums_every_floating_tensor_that_requires_grad(self, wrap, no_warnings):
        torch.manual_seed(0)
        model, x = TwoHeads(wrap), torch.rand(3, 8)
        result = profile_training(model, (x,))
        pair = TwoHeads(lambda y, z: (y, z))
        assert step_matmul(result) == oracle_matmul(pair, lambda: pair(x), lambda out: out[0].sum() + out[1].sum())
        head = {"head1": 16 * 4, "head2": 16 * 2}
        for name, macs in head.items():  # each head's backward: its weight's and its input's gradients
            assert result.layer(name).backward.matmul_flops == 2 * (2 * 3 * macs)

    def test_an_output_with_no_tensor_that_requires_grad_says_so(self):
        model = TwoHeads(lambda y, z: Out(y.detach(), z.detach()))
        with pytest.raises(LossError, match="holds no floating-point tensor that requires grad"):
            profile_training(model, (torch.rand(3, 8),))

    @pytest.mark.parametrize(("wrap", "says"), [
        pytest.param(lambda y, z: types.SimpleNamespace(y=y, z=z), r"output \(SimpleNamespace\) holds no tensor the default "
                     r"loss can find: it searches tuples", id="plain object"),
        pytest.param(lambda y, z: (y.argmax(-1), y > 0), r"no floating-point tensor \(only bool, int64\)", id="integers"),
    ])
    def test_an_output_the_default_loss_cannot_use_says_why(self, wrap, says):
        model = TwoHeads(wrap)
        before = snapshot(model)
        with pytest.raises(LossError, match=says + ".* Pass loss=lambda output"):
            profile_training(model, (torch.rand(3, 8),))
        assert_unchanged(model, before)

    def test_a_type_registered_with_pytree_is_searched(self):
        from torch.utils import _pytree as pytree

        class Registered:
            def __init__(self, y, z):
                self.y, self.z = y, z

        pytree.register_pytree_node(Registered, lambda r: ([r.y, r.z], None), lambda xs, _: Registered(*xs))
        try:
            self.test_the_default_loss_sums_every_floating_tensor_that_requires_grad(Registered, None)
        finally:
            pytree._deregister_pytree_node(Registered)

    def test_a_container_holding_itself_is_searched_once(self):
        x = torch.rand(2)
        box = {"x": x}
        box["self"] = box
        assert [t is x for t in tensors_in(box)] == [True]


@dataclasses.dataclass
class WithDerived:
    x: torch.Tensor
    derived: torch.Tensor = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.derived = self.x * 2


class Holder:
    def __init__(self, t: torch.Tensor) -> None:
        self.t = t

    def get(self):
        return self.t


@pytest.mark.parametrize("holder", [
    pytest.param(lambda t, layer: WithDerived(t), id="dataclass"),
    pytest.param(lambda t, layer: {t}, id="set"),
    pytest.param(lambda t, layer: collections.deque([t]), id="pytree-registered"),
    pytest.param(lambda t, layer: functools.partial(layer, t), id="partial"),
    pytest.param(lambda t, layer: lambda: layer(t), id="closure"),
    pytest.param(lambda t, layer: (lambda a, b=t: a), id="default"),
    pytest.param(lambda t, layer: (lambda a, *, b=t: a), id="keyword default"),
    pytest.param(lambda t, layer: Holder(t).get, id="bound method"),
])
def test_one_tensor_search_opens_every_kind_of_holder_but_modules(holder):
    """The one search the inputs, the default loss and the checkpoint accounting share: every
    container and what a callable keeps, never a module's parameters, a cycle once."""
    t, layer = torch.rand(2), nn.Linear(2, 2)
    held = holder(t, layer)
    box = {"held": held}
    box["self"] = box
    found = list(tensors_in(box))
    expected = [t, held.derived] if isinstance(held, WithDerived) else [t]  # a field left out of __init__ too
    assert {id(x) for x in found} == {id(x) for x in expected} and len(found) == len(expected)


# --------------------------------------------------------------- a roofline of a training result


FIGURES = ("backward_macs", "backward_flops", "backward_matmul_flops", "training_flops", "activation_bytes",
           "total_macs", "total_flops", "total_params", "memory")


class TestTrainingRoofline:
    @pytest.fixture(scope="class")
    def step(self) -> TrainingResult:
        return profile_training(mlp(), (torch.rand(4, 8),), optimizer="adamw")

    @pytest.mark.parametrize("device, dtype", [("H100-SXM5", None), ("A100-SXM4-80GB", "tf32")])
    def test_keeps_every_training_figure(self, step, device, dtype):
        estimate = step.roofline(device, dtype)
        assert isinstance(estimate, TrainingRoofline)
        assert isinstance(estimate, TrainingResult) and isinstance(estimate, RooflineResult)
        for figure in FIGURES:
            assert getattr(estimate, figure) == getattr(step, figure), figure
        assert tuple(estimate) == tuple(step)  # macs, params
        assert estimate.source is step

    def test_exports_the_memory_and_the_device(self, step):
        estimate = step.roofline("H100-SXM5")
        data = estimate.to_dict()
        assert data["memory"] == step.memory.to_dict() == step.to_dict()["memory"]
        assert data["roofline"] == estimate.device_dict()
        assert data["totals"]["roofline_time"] == estimate.time
        assert {k: v for k, v in data["totals"].items() if k not in ("roofline_time", "bound")} == \
            step.to_dict()["totals"]

    def test_summary_and_table(self, step):
        estimate = step.roofline("H100-SXM5")
        assert training_summary(estimate) == training_summary(step)
        header = estimate.table(depth=1).splitlines()[0]
        assert "Bwd FLOPs" in header and "Est. time" in header
        assert "TrainingRoofline(" in repr(estimate) and "memory=" in repr(estimate)

    def test_a_roofline_of_the_roofline_is_one_too(self, step):
        again = step.roofline("H100-SXM5").roofline("L4")
        assert isinstance(again, TrainingResult) and again.memory == step.memory
        assert again.time == step.roofline("L4").time


# --------------------------------------------------------------- parameters sharing a storage


class Shared(nn.Module):
    """``b`` views all of ``a``'s storage, ``c`` its first two rows; ``tied`` is ``a`` itself."""

    def __init__(self, view_buffer: bool = False):
        super().__init__()
        self.a = nn.Parameter(torch.rand(4, 8))
        self.b = nn.Parameter(self.a.data)
        self.c = nn.Parameter(self.a.data[:2])
        self.tied = self.a
        if view_buffer:
            self.register_buffer("mirror", self.a.data[1])

    def forward(self, x):
        return (x @ self.a.T).sum() + (x @ self.b.T).sum() + (x @ self.c.T).sum() + (x @ self.tied.T).sum()


class TestSharedStorage:
    @pytest.mark.parametrize("view_buffer", [False, True], ids=["", "buffer-viewing-a-parameter"])
    def test_each_storage_once_each_parameter_its_gradient_and_state(self, view_buffer):
        model, x = Shared(view_buffer), torch.rand(3, 8)
        memory = profile_training(model, (x,), optimizer="adam").memory
        a, c = 4 * 8 * 4, 2 * 8 * 4  # bytes of a's storage (b's and c's too) and of c's own elements
        assert memory.parameters == a
        assert memory.buffers == 0
        assert memory.gradients == a + a + c  # a, b and c: tied is a
        assert memory.optimizer_state == 2 * (a + a + c)  # Adam's two moments per Parameter

        # what torch allocates, on the model itself (a deepcopy would not share the storage): a
        # .grad per Parameter, Adam's moments per Parameter
        optimizer = torch.optim.Adam(model.parameters())
        model(x).backward()
        optimizer.step()
        params = list(model.parameters())
        assert memory.gradients == sum(p.grad.nbytes for p in params)
        assert len({p.grad.untyped_storage().data_ptr() for p in params}) == len(params)
        assert memory.optimizer_state == sum(t.nbytes for state in optimizer.state.values()
                                             for key, t in state.items() if key != "step")
        assert memory.parameters == len({p.untyped_storage().data_ptr() for p in params}) * a
