"""Shared test helpers: the examples as importable modules, and small checks on layer trees."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import warnings

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules import module as module_globals
from torch.overrides import _get_current_function_mode_stack
from torch.utils.flop_counter import FlopCounterMode

from profiler import Layer, ProfileResult, UncountedWarning, profile

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (its ``main()`` does not run)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module



class Call(nn.Module):
    """A module whose forward is ``fn(*inputs)``: a torch function called inside a forward."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs):
        return self.fn(*inputs)

class Block(nn.Module):
    """A residual block for the small table models: Linear(8, 8), GELU, and an add."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.act(self.proj(x))


@pytest.fixture
def seed():
    """The seed article's model and input: ``model, x``."""
    return load_example("transformer_flops").seed_model()


def assert_tree_invariant(layer: Layer) -> None:
    """Each layer's total is its own counts plus its children's totals, all the way down."""
    children = layer.own
    for child in layer.children:
        assert_tree_invariant(child)
        children = children + child.total
    assert layer.total == children, f"layer {layer.name!r}: total {layer.total} != own + children {children}"


def flop_counter_flops(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> int:
    """FlopCounterMode's total for one forward in the model's current mode, with grad enabled and
    the math attention kernel (it counts 0 for the fused CPU kernels and MHA's no-grad fast path)."""
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.enable_grad():
        model(*args, **(kwargs or {}))
    return counter.get_total_flops()


def counted(model: nn.Module, args: tuple = (), kwargs: dict | None = None) -> ProfileResult:
    """``profile()``, failing the test if anything ran without a rule or the tree does not add up."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedWarning)
        result = profile(model, args, kwargs=kwargs)
    assert result.uncounted == ()
    assert_tree_invariant(result.root)
    return result


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)

# _global_forward_hooks_with_kwargs is checked on its own (test_no_global_hook_flag_left_behind)
GLOBAL_HOOK_DICTS = tuple(
    name for name in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_forward_hooks_always_called",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    if hasattr(module_globals, name)
)


def snapshot(model: nn.Module) -> dict:
    """Everything about the model that profiling must leave as it was."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [(name, m.training) for name, m in model.named_modules(remove_duplicate=False)],
        "requires_grad": [(name, p.requires_grad) for name, p in model.named_parameters(remove_duplicate=False)],
        "attrs": [(name, sorted(vars(m))) for name, m in model.named_modules(remove_duplicate=False)],
        "hooks": [(name, {d: dict(getattr(m, d)) for d in HOOK_DICTS}) for name, m in model.named_modules()],
        "buffers": [(name, sorted(m._buffers)) for name, m in model.named_modules()],
    }


def assert_unchanged(model: nn.Module, before: dict, grad_enabled: bool = True) -> None:
    """The model as in ``before``; no function mode, no global module hooks, grad mode as it was."""
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    for part in ("training", "requires_grad", "attrs", "hooks", "buffers"):
        assert after[part] == before[part], part
    assert _get_current_function_mode_stack() == []
    assert torch._C._len_torch_function_stack() == 0
    assert torch._C._len_torch_dispatch_stack() == 0  # the aten-level counter is off again
    for name in GLOBAL_HOOK_DICTS:
        assert not getattr(module_globals, name), name
    assert torch.is_grad_enabled() is grad_enabled
