"""Shared test helpers: the examples as importable modules, and small checks on layer trees."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from profiler import Layer

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
