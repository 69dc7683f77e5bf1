"""``profile()``: thop's entry point, counting with the hook registry."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hooks import REGISTRY, Rule, capture, custom_rule
from profiler.result import ProfileResult
from profiler.tree import build_tree, uncounted_summary

__all__ = ["profile", "UncountedWarning"]


class UncountedWarning(UserWarning):
    """Some layers or torch functions ran without a rule; their work is not in the totals."""


def _normalise_inputs(inputs: Any) -> tuple:
    if inputs is None:
        return ()
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    hint = " (pass keyword arguments as kwargs=...)" if isinstance(inputs, Mapping) else ""
    raise TypeError(f"inputs must be a tensor or a tuple/list of forward's arguments, not {type(inputs).__name__}{hint}")


def _custom_rules(custom_ops: Mapping[type, Callable] | None) -> dict[type, Rule]:
    rules = {}
    for key, fn in (custom_ops or {}).items():
        if not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise TypeError(f"custom_ops keys must be nn.Module subclasses, not {key!r}")
        if not callable(fn):
            raise TypeError(f"custom_ops[{key.__name__}] must be callable fn(module, inputs, output), not {fn!r}")
        rules[key] = custom_rule(fn)
    return rules


def profile(
    model: nn.Module,
    inputs: Any = None,
    custom_ops: Mapping[type, Callable] | None = None,
    verbose: bool = False,
    ret_layer_info: bool = False,
    report_missing: bool = False,
    *,
    kwargs: Mapping[str, Any] | None = None,
) -> ProfileResult:
    """Count the MACs, FLOPs and parameters of one forward pass of ``model``.

    ``inputs`` is a tensor or a tuple of ``forward``'s positional arguments (a lone tensor is one
    argument; thop would unpack it along its first dimension); ``kwargs`` go to ``forward`` by
    keyword. The forward runs once in eval mode under ``torch.no_grad()``; the model comes back
    exactly as it was. ``custom_ops`` maps module types to thop-style rules
    ``fn(module, inputs, output)``. Returns a :class:`ProfileResult`, which unpacks as
    ``macs, params`` (``macs, params, layer_info`` with ``ret_layer_info=True``).
    """
    if isinstance(model, type):
        raise TypeError(f"model must be an nn.Module instance, not the class {model.__name__}; call it first")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, not {type(model).__name__}")
    args = _normalise_inputs(inputs)
    forward_kwargs = dict(kwargs or {})
    resolver = REGISTRY.resolver(_custom_rules(custom_ops))

    result = capture(model, lambda: model(*args, **forward_kwargs), resolver)

    root = build_tree(result.modules, result.records)
    uncounted = uncounted_summary(result.records)
    if verbose:
        for rule_name, types in _rules_used(result.modules).items():
            print(f"[INFO] {rule_name}() counts {', '.join(types)}")
    if uncounted:
        listing = "; ".join(f"{u.name} ×{u.calls}" for u in uncounted)
        if report_missing:
            for u in uncounted:
                print(f"[WARN] no rule for {u.kind} {u.name} ({u.calls} calls in {', '.join(u.layers)}); not counted")
        warnings.warn(f"ran without a rule, not counted: {listing}", UncountedWarning, stacklevel=2)
    return ProfileResult(root, uncounted, ret_layer_info=ret_layer_info)


def _rules_used(modules) -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for info in modules:
        if info.rule is not None and info.type not in used.get(info.rule, []):
            used.setdefault(info.rule, []).append(info.type)
    return used
