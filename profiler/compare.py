"""A per-layer comparison with thop 0.1.1 for people migrating, each difference with its reason.

The reasons come from the registry and the capture: the rule that counted a layer (and the
thop difference it declares), whether thop has a rule for the layer's exact type, and the torch
functions a layer's forward called.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from hooks import REGISTRY
from profiler.api import forward_arguments, profile
from profiler.render import printable, tabulate_text
from profiler.tree import Layer, walk
from profiler.units import format_count

__all__ = ["Comparison", "ComparisonRow", "compare_with_thop"]


@dataclass(frozen=True, slots=True)
class ComparisonRow:
    """One layer's own MACs in hookprof and in thop (its rule's, or what its forward called)."""

    name: str
    type: str
    ours: int
    thop: int
    reason: str

    @property
    def difference(self) -> int:
        return self.ours - self.thop


@dataclass(frozen=True, slots=True)
class Comparison:
    """Totals and per-layer rows; ``differences`` are the rows where the numbers disagree."""

    rows: tuple[ComparisonRow, ...]
    macs: int
    thop_macs: int
    params: int
    thop_params: int

    @property
    def differences(self) -> tuple[ComparisonRow, ...]:
        return tuple(row for row in self.rows if row.difference)

    def table(self, *, all_layers: bool = False, units: str = "exact", tablefmt: str = "simple") -> str:
        """The differing layers (every layer with ``all_layers=True``) and the totals. Reasons are
        numbered in the table and written out under it, so the table stays narrow."""
        shown = self.rows if all_layers else self.differences
        reasons: dict[str, str] = {}

        def ref(reason: str) -> str:
            return reasons.setdefault(reason, f"[{len(reasons) + 1}]") if reason else ""

        params_reason = "thop counts the parameters of layers it has a rule for" if self.params != self.thop_params else ""
        body = [
            [printable(r.name) or "(model)", printable(r.type), format_count(r.ours, units), format_count(r.thop, units),
             format_count(r.difference, units), ref(r.reason)]
            for r in shown
        ]
        body.append(["Total MACs", "", format_count(self.macs, units), format_count(self.thop_macs, units),
                     format_count(self.macs - self.thop_macs, units), ""])
        body.append(["Total params", "", format_count(self.params, units), format_count(self.thop_params, units),
                     format_count(self.params - self.thop_params, units), ref(params_reason)])
        notes = "\n".join(f"{key} {printable(reason)}" for reason, key in reasons.items())
        return tabulate_text(body, ["Layer", "Type", "hookprof MACs", "thop MACs", "Difference", "Reason"],
                             ("left", "left", "right", "right", "right", "left"), tablefmt, [notes])

    def __repr__(self) -> str:
        return (f"Comparison(macs={self.macs:,}, thop_macs={self.thop_macs:,}, "
                f"differing_layers={len(self.differences)})")


def _flatten(info: Mapping[str, tuple], prefix: str = "") -> dict[str, float]:
    """thop's nested ``{name: (ops, params, children)}`` as ``{dotted name: subtree ops}``."""
    flat: dict[str, float] = {}
    for name, (ops, _, children) in info.items():
        full = f"{prefix}{name}"
        flat[full] = ops
        flat.update(_flatten(children, f"{full}."))
    return flat


def _thop_rule_for(module_type: type, thop_rules: Mapping[type, Callable]) -> type | None:
    """The class along the MRO that thop has a rule for, if any (thop itself only tries the first)."""
    return next((cls for cls in module_type.__mro__ if cls in thop_rules), None)


def _reason(layer: Layer, module: nn.Module, thop_rules: Mapping[type, Callable], custom: Mapping) -> str:
    if layer.rule is not None:
        module_type = type(module)
        base = _thop_rule_for(module_type, thop_rules)
        if any(isinstance(module, t) for t in custom):
            return f"custom rule {layer.rule}; thop ran without it"
        if base is module_type:
            rule = REGISTRY.resolver().module_rule(module_type)
            return rule.thop if rule is not None and rule.thop else "unexplained"
        if base is not None and base is not nn.Sequential:
            return f"thop matches exact types; {module_type.__name__} is a subclass of {base.__name__}"
        return f"thop has no rule for {module_type.__name__}"
    calls = [f"{f.function.rpartition('.')[2]} ×{f.calls}" for f in layer.functions if f.counts.macs]
    if calls:
        return f"torch functions inside forward: {', '.join(calls)}"
    return "unexplained"


def compare_with_thop(
    model: nn.Module,
    inputs: Any = None,
    *,
    input_size: Any = None,
    input_dtype: Any = None,
    custom_ops: Mapping[type, Callable] | None = None,
) -> Comparison:
    """Profile ``model`` with hookprof and with thop (on a copy: thop adds buffers and resets
    training flags) and explain every layer whose MACs differ."""
    try:
        import thop
        from thop.profile import register_hooks as thop_rules
    except ImportError as exc:
        raise ImportError("compare_with_thop() needs thop: pip install thop") from exc
    args = forward_arguments(model, inputs, input_size, input_dtype, None)
    ours = profile(model, args, custom_ops=custom_ops)
    thop_macs, thop_params, info = thop.profile(copy.deepcopy(model), inputs=args, verbose=False, ret_layer_info=True)
    thop_sub = _flatten(info)
    thop_sub[""] = thop_macs
    modules = dict(model.named_modules())
    duplicated_parents = {
        name.rpartition(".")[0] for name, _ in model.named_modules(remove_duplicate=False) if name not in modules
    }
    rows = []
    for layer in walk(ours.root):
        theirs = thop_sub.get(layer.name, 0.0)
        if layer.rule is None:
            theirs -= sum(thop_sub.get(child.name, 0.0) for child in layer.children)
        ours_own = layer.own.macs if layer.rule is None else layer.total.macs
        theirs = round(theirs)
        reason = ""
        if ours_own != theirs:
            if layer.name in duplicated_parents and layer.rule is None:
                reason = "thop counts a module registered under several parents once per parent"
            else:
                reason = _reason(layer, modules[layer.name], thop_rules, custom_ops or {})
        rows.append(ComparisonRow(layer.name, layer.type, ours_own, theirs, reason))
    return Comparison(tuple(rows), ours.total_macs, round(thop_macs), ours.total_params, round(thop_params))

