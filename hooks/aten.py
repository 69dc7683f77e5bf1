"""The aten-level view: rules for aten operators, and a TorchDispatchMode that the capture switches
on only where the Python level is blind.

The capture pushes :class:`AtenCounter` around a scripted or traced module's call (TorchScript runs
no Python), and around a torch function that has no function rule (an exported graph's
``torch.ops.aten.*`` calls, a custom op, a function no rule names); everywhere else it is off and
costs nothing. Each aten operator is counted by the first of:

1. a function rule registered for the operator itself (``@function_rule(torch.ops.mylib.myop.default)``
   or its packet ``torch.ops.mylib.myop``): custom ops and aten-specific rules;
2. the function rule of the torch function of the same name (``aten.addmm`` by ``torch.addmm``'s,
   ``aten.gelu`` by ``F.gelu``'s), so the two levels count alike;
3. ``torch.utils.flop_counter``'s formula for matmul-like operators (mm, convolution, attention
   kernels): FlopCounterMode's convention is ours;
4. the operator's own description: a view (its schema's return aliases an input), an operator with
   no tensor arguments (a factory: ``eye``, ``arange``) or a random one is free;
   ``torch.Tag.pointwise`` is 1 FLOP per output element.

Anything else is uncounted, reported by its name (``aten.special_i0``), never a silent zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from hooks.counts import Counts
from hooks.registry import FREE, Rule

__all__ = ["AtenCounter", "aten_rule", "op_name"]

# torch functions whose aten operator has another name: the operator is counted by their rule
_SAME_AS: dict[str, Callable] = {
    "_softmax": torch.softmax,
    "_log_softmax": torch.log_softmax,
    "_to_copy": torch.Tensor.to,
    "lift_fresh": torch.Tensor.detach,
    "lift_fresh_copy": torch.Tensor.clone,
    "index": torch.Tensor.__getitem__,
    "_unsafe_index": torch.Tensor.__getitem__,
    "clamp_min": torch.clamp,
    "clamp_max": torch.clamp,
    "clamp_min_": torch.clamp,  # in place (margin losses): free as clamps are, not pointwise
    "clamp_max_": torch.clamp,
    "constant_pad_nd": F.pad,
    "_adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "_adaptive_avg_pool3d": F.adaptive_avg_pool3d,
    "max_pool2d_with_indices": F.max_pool2d,
    "max_pool3d_with_indices": F.max_pool3d,
    "native_dropout": F.dropout,
    "_sparse_mm": torch.mm,
    "_sparse_addmm": torch.addmm,
    "linalg_vector_norm": torch.linalg.vector_norm,
}

_OWNERS = (torch, F, torch.Tensor, torch.special, torch.linalg)


def op_name(op: Any) -> str:
    """``aten.addmm``, ``mylib.myop``, ``higher_order.cond``: an operator as users read it, without
    its overload."""
    if isinstance(op, torch._ops.HigherOrderOperator):
        return f"higher_order.{op.name()}"
    packet = getattr(op, "overloadpacket", op)
    return str(packet) if isinstance(packet, torch._ops.OpOverloadPacket) else repr(op)


def _flop_counter_rule(op: torch._ops.OpOverload) -> Rule | None:
    from torch.utils.flop_counter import flop_registry  # imported when first needed: it costs 50 ms

    formula = flop_registry.get(op.overloadpacket)
    if formula is None:
        return None

    def flop_counter_counts(args: tuple, kwargs: dict, out: Any) -> Counts:
        return Counts.matmul(formula(*args, **kwargs, out_val=out) // 2)

    return Rule(name=f"flop_counter[{op_name(op)}]", fn=flop_counter_counts)


def _pointwise_counts(args: tuple, kwargs: dict, out: Any) -> Counts:
    # one FLOP per output element (the first output of an operator that returns several)
    first = out[0] if isinstance(out, (tuple, list)) else out
    return Counts.elementwise(flops=first.numel())


_POINTWISE = Rule(name="aten_pointwise_counts", fn=_pointwise_counts)


def aten_rule(op: torch._ops.OpOverload, function_rules: dict[Callable, Rule]) -> Rule | None:
    """The rule counting one aten (or custom) operator; None when there is none (uncounted)."""
    rule = function_rules.get(op) or function_rules.get(getattr(op, "overloadpacket", None))
    if rule is not None:
        return rule
    schema = getattr(op, "_schema", None)
    if schema is None:  # a higher-order operator with no rule of its own
        return None
    name = op.overloadpacket.__name__
    if op.namespace == "aten":
        same = _SAME_AS.get(name)
        candidates = [same] if same is not None else [getattr(owner, name, None) for owner in _OWNERS]
        for function in candidates:
            rule = function_rules.get(function) if function is not None else None
            if rule is not None:
                return rule
    rule = _flop_counter_rule(op)
    if rule is not None:
        return rule
    if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
        return FREE  # a view of an input
    if not any(isinstance(a.type, torch.TensorType) or "Tensor" in str(a.type) for a in schema.arguments):
        return FREE  # a factory: eye, arange, zeros, full...
    if torch.Tag.nondeterministic_seeded in op.tags:
        return FREE  # random draws (dropout masks, bernoulli): no arithmetic by decision
    if torch.Tag.pointwise in op.tags:
        return _POINTWISE
    return None


class AtenCounter(TorchDispatchMode):
    """Hands every aten operator that runs while it is pushed to ``count(op, args, kwargs, out)``."""

    def __init__(self, count: Callable[[Any, tuple, dict, Any], None]) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # an operator called from Python would go through the torch-function mode again (it is on
        # the stack in a backward, which the engine runs outside the mode's own handler)
        with torch._C.DisableTorchFunction():
            out = func(*args, **kwargs)
        self.count(func, args, kwargs, out)
        return out
