"""Capture: module hooks and a TorchFunctionMode for one forward pass, producing records.

A global forward pre-hook and forward hook, alive for this forward only, keep the stack of the
model's running modules (the forward hook also runs when a module raises, so a forward that
catches a layer's error goes on being counted). A module whose type has a rule is counted by it from
``(module, inputs, output)`` and covers its subtree: its children are ignored and the torch
functions they call are not counted again. Inside modules without a rule, the function mode
counts each torch function call with a function rule and attributes it to the innermost running
module. The hooks are removed, and every module's ``training`` flag restored, before
:func:`capture_forward` returns or raises.
"""

from __future__ import annotations

import gc
import inspect
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
import contextlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from hooks.aten import AtenCounter, aten_rule, op_name
from hooks.counts import ZERO, Counts, checked
from hooks.records import Record, Shape
from hooks.registry import Resolver, Rule
from hooks.rules.common import positional
from hooks.traffic import (
    GATHER_MODULES, GATHERS, METADATA_IN_PLACE, call_traffic, embedding_bag_traffic, free_call_traffic, module_tensors,
    nbytes, traffic,
)

__all__ = [
    "ModuleInfo", "Capture", "CaptureError", "RuleError", "attached", "capture_forward", "compiled_runs_eagerly",
    "forward_error", "gc_paused", "modules_by_name", "record_traffic", "shapes_of",
]


class ModuleInfo(NamedTuple):
    """Static facts about one module of the model, in ``named_modules()`` order.

    ``params`` counts the parameters registered on this module itself; a parameter shared by
    several modules is owned by the first one in ``named_modules()`` order. ``covered`` is True
    when an ancestor has a module rule, which counts this module too. A NamedTuple: one is made
    per module, and a model may have tens of thousands.
    """

    name: str
    type: str
    params: int
    rule: str | None
    covered: bool


@dataclass(frozen=True, slots=True)
class Capture:
    """What one forward pass left behind."""

    modules: tuple[ModuleInfo, ...]
    records: tuple[Record, ...]
    other_threads: tuple[str, ...] = ()
    """Names of the model's layers called from other threads meanwhile, once per call: not counted."""
    notes: tuple[str, ...] = ()
    """What the capture did about wrapped, compiled, scripted or exported modules, a line each."""
    ran_nothing: bool = False
    """The model's forward ran no layer and no torch function (it returned a generator, or early)."""
    lazy_output: str = ""
    """The type of the lazy iterator the forward returned (``generator``, ``map``), if it did: the
    work it does when consumed runs after the capture, uncounted (not an iterator over a container,
    whose work is done)."""

    @property
    def idle(self) -> bool:
        """True when the forward ran nothing at all, or when no layer holding the model's
        parameters ran and no call left a record (no work, uncounted work or copy: at most views)
        while the model holds parameters: its layers were skipped. A model of parameter-free
        layers that ran (``ReLU``, ``Flatten``) is not idle: it did no arithmetic, by design."""
        if self.ran_nothing:
            return True
        if self.other_threads:
            return False  # the layers ran in another thread, which its own warning says
        called: set[str] = set()  # layers whose module call has a record
        for r in self.records:
            if r.function is not None or r.macs or r.flops or r.status == "uncounted":
                return False
            called.add(r.name)
        holds = False
        ruled = ""  # the ruled layer a covered one is counted in: in named_modules() order, the last not covered
        for info in self.modules:
            if not info.covered:
                ruled = info.name
            if info.params:
                holds = True
                # the model's own record says it ran only when its rule counted it
                if info.name in called and (info.name or info.rule) or info.covered and ruled in called:
                    return False
        return holds


class RuleError(RuntimeError):
    """A counting rule raised or returned something that is not counts."""


class CaptureError(RuntimeError):
    """The model's forward raised; the message names the innermost layer that was running."""


def shapes_of(value: Any) -> tuple[Shape, ...]:
    """Shapes of the tensors in ``value``, searched through tuples, lists and dicts.

    Each shape is the tensor's ``torch.Size``, an immutable tuple of ints, kept as it is; a nested
    tensor's has None for each ragged dimension (:func:`_nested_shape`).
    """
    if isinstance(value, torch.Tensor):
        return (_nested_shape(value) if value.is_nested else value.shape,)
    if isinstance(value, dict):
        value = tuple(value.values())
    if isinstance(value, (tuple, list)):
        shapes = []  # a loop, not nested generators: this runs on every module call
        for item in value:
            if isinstance(item, torch.Tensor):
                shapes.append(_nested_shape(item) if item.is_nested else item.shape)
            elif isinstance(item, (tuple, list, dict)):
                shapes.extend(shapes_of(item))
        return tuple(shapes)
    return ()


def _nested_shape(t: torch.Tensor) -> Shape:
    """A nested tensor's shape with None for each ragged dimension, which has no one size: a
    strided nested tensor has no ``.shape`` at all, a jagged one a symbolic size there."""
    sizes: list[int | None] = []
    for dim in range(t.dim()):
        try:
            size = t.size(dim)
        except RuntimeError:  # "dimension 1 is irregular"
            size = None
        sizes.append(size if type(size) is int else None)
    return tuple(sizes)


def _new_record(fields: tuple) -> Record:
    """``Record(*fields)`` at half the cost: the hooks make one per module call."""
    return tuple.__new__(Record, fields)


def _input_shapes(args: tuple, kwargs: dict) -> tuple[Shape, ...]:
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor) and not args[0].is_nested:  # most calls
        return (args[0].shape,)
    return shapes_of(args) + shapes_of(kwargs) if kwargs else shapes_of(args)


def _layer(name: str) -> str:
    """``layer 'features.3'`` for messages; the root module is ``the model``."""
    return f"layer '{name}'" if name else "the model"


def _listed(shapes: tuple[Shape, ...]) -> list[tuple[int, ...]]:
    """Shapes as plain tuples, for messages: ``[(1, 3, 224, 224)]``."""
    return [tuple(shape) for shape in shapes]


def _is_floating(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() or value.is_complex()
    if isinstance(value, (tuple, list)):
        return any(_is_floating(v) for v in value)
    return False


def _passes_through(args: tuple, output: Any) -> bool:
    """True when ``output`` is one of the input tensors itself: the module did no work."""
    return isinstance(output, torch.Tensor) and any(output is a for a in args)


def _function_name(func: Callable) -> str:
    """``torch.Tensor.add``, ``torch.nn.functional.linear``, ``torch.mm``: where users call it from."""
    name = getattr(func, "__name__", None)
    if name is not None:
        for owner, prefix in ((torch.Tensor, "torch.Tensor."), (torch.nn.functional, "torch.nn.functional."), (torch, "torch.")):
            if getattr(owner, name, None) is func:
                return prefix + name
    return resolve_name(func) or getattr(func, "__qualname__", None) or repr(func)


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """``args`` with ``kwargs`` (and defaults) placed at their positions in ``forward``'s signature."""
    if not kwargs:
        return args
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return args
    bound.apply_defaults()
    return bound.args


class _Planned(NamedTuple):
    name: str
    module: nn.Module
    rule: Rule | None
    covered: bool
    how: int = 0  # _RULED, _TRACED, _UNPROVEN or _ATEN: how the module's calls are counted


# How a module's calls are counted (a frame's kind while it runs).
_TRACED = 0  # no rule: the torch functions its forward calls, by function rules
_RULED = 1  # its rule, which covers the subtree
_UNPROVEN = 2  # traced, then counted by the rule inherited across an overridden forward if it agrees
_ATEN = 3  # a scripted or traced module (TorchScript runs no Python): its aten operators


def _unwrapped(module: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) stands for; others as they are."""
    dynamo = sys.modules.get("torch._dynamo")  # not loaded: nothing can have been compiled
    if dynamo is not None and isinstance(module, dynamo.eval_frame.OptimizedModule):
        return module._orig_mod
    return module


def _how(module: nn.Module, resolver: Resolver) -> tuple[Rule | None, int]:
    if isinstance(module, torch.jit.ScriptModule):
        return None, _ATEN
    rule, unproven = resolver.lookup(type(module))
    if rule is None:
        return None, _TRACED
    return rule, _UNPROVEN if unproven else _RULED


def _plan(model: nn.Module, resolver: Resolver, notes: list[str] | None = None) -> list[_Planned]:
    """The names and order of ``nn.Module.named_modules()``, each module with its rule; a module
    under a ruled ancestor is covered and gets no hooks. Without a generator per module: a third of
    the cost (a class's own override of ``named_modules()`` is not consulted). A module registered
    under several parents appears once per path, so each call can go to the parent that made it;
    a ``torch.compile`` wrapper is replaced by the module it wraps, under the wrapper's name.
    ``notes`` gets a line for each wrapper or TorchScript module met, for ``verbose``."""
    planned: list[_Planned] = []
    _add(model, "", False, resolver, planned, set(), notes)
    return planned


def _add(module: nn.Module, name: str, covered: bool, resolver: Resolver, planned: list, path: set,
         notes: list[str] | None) -> None:
    unwrapped = _unwrapped(module)
    if unwrapped is not module and notes is not None:
        notes.append(f"{_layer(name)} is a torch.compile wrapper: the module it wraps ran eagerly and was counted")
    module = unwrapped
    rule, how = (None, _TRACED) if covered else _how(module, resolver)
    planned.append(_Planned(name, module, rule, covered, how))
    if notes is not None and not covered:
        if how == _ATEN:
            notes.append(f"{_layer(name)} is TorchScript (scripted or traced): counted by the aten operators it ran")
        elif isinstance(module, torch.fx.GraphModule):
            notes.append(f"{_layer(name)} is a GraphModule (torch.export, torch.fx): its torch.ops calls were "
                         "counted at the aten level, and eval mode set on each module's flag (it refuses eval())")
    if module._modules:
        path.add(module)
        _visit(module, name + "." if name else "", covered or how in (_RULED, _ATEN), resolver, planned, path, notes)
        path.discard(module)


def _visit(module: nn.Module, prefix: str, covered: bool, resolver: Resolver, planned: list, path: set,
           notes: list[str] | None) -> None:
    for name, child in module._modules.items():
        if child is not None and _unwrapped(child) not in path:  # a module holding an ancestor: a cycle, walked once
            _add(child, prefix + name, covered, resolver, planned, path, notes)


def _module_infos(planned: list[_Planned]) -> tuple[ModuleInfo, ...]:
    """Facts read after the forward, when lazy modules have their parameters and final class."""
    owners: dict[int, tuple[int, int]] = {}  # each parameter's first module, by position: its size
    for position, p in enumerate(planned):
        # _parameters is parameters(recurse=False) without a generator per module
        for parameter in p.module._parameters.values():
            if parameter is not None:
                owners.setdefault(id(parameter), (position, parameter.numel()))
        packed = _packed(p.module)
        if packed is not None:
            owners.setdefault(id(packed), (position, sum(t.numel() for t in p.module._weight_bias() if t is not None)))
    params = [0] * len(planned)
    for position, numel in owners.values():
        params[position] += numel
    return tuple([
        ModuleInfo(p.name, _type_name(p.module), count, p.rule.name if p.rule and p.how == _RULED else None, p.covered)
        for p, count in zip(planned, params)
    ])


def _packed(module: nn.Module) -> object | None:
    """The packed weights of a quantized layer (not ``Parameter``s), which ``_weight_bias()``
    unpacks; a quantized Linear and its ``LinearPackedParams`` child share them."""
    if not callable(getattr(module, "_weight_bias", None)):
        return None
    packed = getattr(module, "_packed_params", None)
    while isinstance(packed, nn.Module):
        packed = getattr(packed, "_packed_params", None)
    return packed


def _type_name(module: nn.Module) -> str:
    """The class name; for a scripted module, the class it was scripted from."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", None) or type(module).__name__
    return type(module).__name__


def _not_dense(values: Iterable) -> str | None:
    """``"nested"`` or ``"sparse"`` when a tensor among ``values`` is one, else None: rules read
    dense shapes, which a nested tensor (strided or jagged) does not have and a sparse one does
    not fill."""
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.is_nested:
                return "nested"
            if value.layout != torch.strided:
                return "sparse"
    return None


_PRODUCTS = frozenset({"matmul_counts", "addmm_counts"})  # the rules of mm, matmul, @, addmm and their aten ops


def _sparse_matmul_counts(args: tuple, out: Any) -> Counts | None:
    """Multiplications a sparse-times-dense product does: one per stored value of the sparse
    operand and column (row) of the dense one. None when the call is not such a product."""
    if not isinstance(out, torch.Tensor) or len(args) < 2:
        return None
    a, b = args[-2], args[-1]  # addmm(input, mat1, mat2): the last two are the product
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() != 2 or b.dim() != 2:
        return None
    if a.layout != torch.strided and b.layout == torch.strided:
        return Counts.matmul(a._nnz() * b.shape[1])
    if b.layout != torch.strided and a.layout == torch.strided:
        return Counts.matmul(a.shape[0] * b._nnz())
    return None


def _vmap_size(value: Any) -> int:
    """How many samples a tensor under ``torch.vmap`` stands for (1 outside vmap): rules read the
    per-sample shape, and the call ran once for every sample."""
    functorch = torch._C._functorch
    if isinstance(value, (tuple, list)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor) or not functorch.is_functorch_wrapped_tensor(value):
        return 1
    logical = value.numel()
    while functorch.is_functorch_wrapped_tensor(value):
        value = functorch.get_unwrapped(value)
    return value.numel() // logical if logical else 1


_RAISED = object()  # what post_hook sees as output when the module raised


class _Recorder(TorchFunctionMode):
    """Holds the running-module stack and the records; counts torch functions as they run, and
    aten operators where the Python level is blind."""

    def __init__(self, function_rules: dict[Callable, Rule], planned: Iterable[_Planned]) -> None:
        super().__init__()
        self.function_rules = function_rules
        self.records: list[Record] = []
        # [name, functions seen, module, args, how, first record] per running module
        self.stack: list[list] = []
        self.suppress = 0  # ruled modules running: their rules count everything they call
        self.paused = False  # off the mode stack while a ruled module runs
        self.names: dict[Callable, str] = {}
        self.aten = AtenCounter(self._count_operator)
        self.aten_on = 0  # frames and calls that have the aten counter pushed
        self.aten_rules: dict[Any, Rule | None] = {}
        self.held: dict[nn.Module, int] = {}  # bytes of each module's parameters and buffers, once known
        self.thread = threading.get_ident()  # global hooks see other threads' module calls too
        self.failure: tuple[list, BaseException] | None = None  # (frame, exception) where the forward raised
        self.rule_error: RuleError | None = None
        self.other_threads: list[str] = []  # layers called from other threads meanwhile
        self.ran_nothing = False
        # name, rule, is a leaf, how it is counted, every name when it has several; covered modules left out
        self.plan: dict[nn.Module, tuple[str, Rule | None, bool, int, tuple[str, ...] | None]] = {}
        for p in planned:
            if p.covered:
                continue
            entry = self.plan.get(p.module)
            if entry is not None:  # registered under another parent too
                self.plan[p.module] = (*entry[:4], (*(entry[4] or (entry[0],)), p.name))
                continue
            leaf = not p.module._modules or next(p.module.children(), None) is None
            self.plan[p.module] = (p.name, p.rule, leaf, p.how, None)

    def _pause(self) -> None:
        """Step off the function-mode stack while a ruled module runs: nothing there is counted,
        and every torch call it makes would otherwise pay for a trip through Python."""
        depth = torch._C._len_torch_function_stack()
        if depth and torch._C._get_function_stack_at(depth - 1) is self:
            torch._C._pop_torch_function_stack()
            self.paused = True

    def _resume(self) -> None:
        if self.paused:
            torch._C._push_on_torch_function_stack(self)
            self.paused = False

    def _aten_push(self) -> None:
        self.aten_on += 1
        if self.aten_on == 1:
            torch._C._push_on_torch_dispatch_stack(self.aten)

    def _aten_pop(self) -> None:
        self.aten_on -= 1
        if self.aten_on == 0:
            torch._C._pop_torch_dispatch_stack(None)

    def close(self) -> None:
        """Undo what a module that raised past its hooks left on: the aten counter, the pause."""
        if self.aten_on:
            self.aten_on = 1
            self._aten_pop()

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self._resume()  # a ruled module that raised never resumed
        super().__exit__(exc_type, exc_value, traceback)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.suppress or not self.stack:
            return func(*args, **kwargs)
        frame = self.stack[-1]
        frame[1] += 1
        rule = self.function_rules.get(func)
        if rule is None:
            if self.aten_on:
                return func(*args, **kwargs)
            if isinstance(func, torch._ops.HigherOrderOperator):  # no dispatch mode may see inside one
                out = func(*args, **kwargs)
                with torch._C.DisableTorchFunction():
                    if _is_floating(out):
                        self._count_call(frame, op_name(func), func, None, args, kwargs, out)
                return out
            self._aten_push()  # a function no rule names: count the aten operators it runs
            try:
                return func(*args, **kwargs)
            finally:
                self._aten_pop()
        out = func(*args, **kwargs)
        if rule.free or not _is_floating(out):  # no arithmetic by decision, or integer and boolean work
            if _moves(out) or func is _SETITEM:  # a copy moves bytes, a view does not
                with torch._C.DisableTorchFunction():
                    if out is None or _copies(func, args, kwargs, out):
                        name = self.names.get(func) or self.names.setdefault(func, _function_name(func))
                        self._free_call(frame, name, func, args, kwargs, out)
            return out
        with torch._C.DisableTorchFunction():
            name = self.names.get(func) or self.names.setdefault(func, _function_name(func))
            self._count_call(frame, name, func, rule, args, kwargs, out)
        return out

    def _count_operator(self, op: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """An aten (or custom) operator ran with the aten counter on: count it in the innermost layer."""
        if self.suppress or not self.stack:
            return
        self._count_operator_in(self.stack[-1], op, args, kwargs, out)

    def _count_operator_in(self, frame: list, op: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Count an aten (or custom) operator in ``frame``'s layer, by :func:`hooks.aten.aten_rule`."""
        frame[1] += 1
        with torch._C.DisableTorchFunction():  # rules' shape reads are not the model's calls
            try:
                rule = self.aten_rules[op]
            except KeyError:
                rule = self.aten_rules[op] = aten_rule(op, self.function_rules)
            if rule is not None and rule.free or not _is_floating(out):  # a copy moves bytes, whatever its dtype
                if _moves(out) and _copies(op, args, kwargs, out):
                    self._free_call(frame, self.names.get(op) or self.names.setdefault(op, op_name(op)), op, args, kwargs, out)
                return
            name = self.names.get(op) or self.names.setdefault(op, op_name(op))
            self._count_call(frame, name, op, rule, args, kwargs, out)

    shapes = True  # records keep the call's shapes (a backward's do without: no table shows them)

    def _free_call(self, frame: list, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """A free call that copies (``torch.cat``, ``to(dtype)``, an embedding): no arithmetic,
        but the bytes it moves."""
        base = _base_name(func)
        in_place = out is None or bool(args) and out is args[0]
        read, written = free_call_traffic(base, args, _without_out(kwargs), out, func in GATHERS, in_place)
        shapes = (shapes_of(args), shapes_of(out)) if self.shapes else ((), ())
        self.records.append(_new_record((frame[0], name, name, "free", *shapes, 0, 0, 0, "free", read, written)))

    def _count_call(self, frame: list, name: str, func: Any, rule: Rule | None, args: tuple, kwargs: dict, out: Any) -> None:
        """One record for a function or operator call in ``frame``'s layer; no rule is uncounted."""
        status = "counted"
        counts = ZERO
        if rule is None:
            status = "uncounted"
        elif (layout := _not_dense((*args, *kwargs.values()) if kwargs else args)) is not None:
            # rules read dense shapes: count a sparse product by its stored values
            counts = _sparse_matmul_counts(args, out) if layout == "sparse" and rule.name in _PRODUCTS else None
            if counts is None:
                counts, status, name = ZERO, "uncounted", f"{name} ({layout})"
        else:
            if kwargs:
                args, kwargs = positional(func, args, kwargs)
            try:
                counts = checked(rule.fn(args, kwargs, out))
            except Exception as exc:
                raise self._rule_error(
                    f"rule {rule.name} failed on {name} in {_layer(frame[0])} with input "
                    f"shapes {_listed(shapes_of(args))}: {exc}"
                ) from exc
            if torch._C._functorch.peek_interpreter_stack() is not None:
                counts = _scaled(counts, _vmap_size(out))
        bag = _EMBEDDING_BAGS.get(func)
        if bag is not None and len(args) > 1:
            indices, weight = args[bag[0]], args[bag[1]]
            others = tuple(a for i, a in enumerate(args) if i not in bag)
            read, written = embedding_bag_traffic(indices, weight, others, out if isinstance(out, torch.Tensor) else out[0])
        else:
            read, written = call_traffic(args, _without_out(kwargs), out, gather=func in GATHERS)
        shapes = (shapes_of(args), shapes_of(out)) if self.shapes else ((), ())
        self.records.append(_new_record((frame[0], name, name, status, *shapes, counts.macs, counts.flops,
                                         counts.matmul_flops, rule.name if status == "counted" else None, read, written)))

    def _name_in_caller(self, module: nn.Module, names: tuple[str, ...]) -> str:
        """Of a shared module's names, the nearest one under the innermost running layer that
        holds it (containers such as ``ModuleList`` hold without running). A layer holding it
        under several names (``Sequential(shared, act, shared)``) gets them in turn, call by call."""
        for frame in reversed(self.stack):
            prefix = frame[0] + "." if frame[0] else ""
            under = [name for name in names if name.startswith(prefix)]
            if under:
                depth = min(name.count(".") for name in under)
                nearest = [name for name in under if name.count(".") == depth]
                if len(nearest) == 1:
                    return nearest[0]
                if len(frame) == 6:
                    frame.append({})  # calls of each shared module this layer made
                calls = frame[6][module] = frame[6].get(module, -1) + 1
                return nearest[calls % len(nearest)]
        return names[0]

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        entry = self.plan.get(module)
        if entry is None:
            return
        if threading.get_ident() != self.thread:
            self.other_threads.append(entry[0])  # list.append is atomic: threads may race here
            return
        name, rule, _, how, names = entry
        if names is not None:
            name = self._name_in_caller(module, names)
        if how != _RULED:
            if not self.suppress:  # else inside a ruled module, whose rule counts this call
                self.stack.append([name, 0, module, args, how, len(self.records)])
                if how == _ATEN:
                    self._aten_push()
            return
        self.stack.append([name, 0, module, args, _RULED, len(self.records)])
        self.suppress += 1
        if self.suppress == 1:
            self._pause()

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any = _RAISED) -> None:
        """After each module call. Registered with ``always_call=True``, it also runs when the
        module raised an ``Exception``: torch then calls ``post_hook(module, args, result)``, three
        arguments, and the frame goes, so a caller that catches the error goes on being counted."""
        entry = self.plan.get(module)
        if entry is None or threading.get_ident() != self.thread:
            return
        if self.stack and self.stack[-1][2] is module:
            frame = self.stack.pop()
        elif self.suppress:  # inside a ruled module: no frame was pushed
            return
        else:  # a child raised a BaseException, which always_call does not cover, and was caught
            frame = self._unwind(module)
            if frame is None:
                return
        if output is _RAISED:
            self._raised(frame)
            return
        name, how = frame[0], frame[4]
        _, rule, leaf, _, _ = entry
        if how != _RULED:
            if how == _ATEN:
                self._aten_pop()
            with torch._C.DisableTorchFunction():  # the mode is on: keep this hook's calls out of it
                if how == _UNPROVEN and self._proven(frame, rule, kwargs, output):
                    return
                if not self.stack and frame[1] == 0 and len(self.records) == frame[5] and not leaf:
                    self.ran_nothing = True  # the outermost layer called nothing at all
                status = "uncounted" if leaf and frame[1] == 0 and not _passes_through(args, output) else "traced"
                # a traced layer's bytes are its calls'; an uncounted leaf's are its own
                read, written = _module_traffic(module, True, args, kwargs, output, self.held) \
                    if status == "uncounted" else (0, 0)
                self.records.append(_new_record((name, _type_name(module), None, status,
                                                 _input_shapes(args, kwargs), shapes_of(output), 0, 0, 0, None,
                                                 read, written)))
            return
        self.suppress -= 1
        if self.suppress:  # a ruled module inside another: the outer rule counts this call
            return
        try:  # the mode is still paused: torch calls from here on are not counted
            status = "counted"
            if rule.free:
                counts, status = ZERO, "free"
            elif _not_dense((*args, *kwargs.values()) if kwargs else args):  # rules read dense shapes
                counts, status = ZERO, "uncounted"
            else:
                counts = self._apply(rule, module, name, _bind(module, args, kwargs), output)
            read, written = _module_traffic(module, leaf, args, kwargs, output, self.held)
            self.records.append(_new_record((name, type(module).__name__, None, status,
                                             _input_shapes(args, kwargs), shapes_of(output), *counts,
                                             rule.name if status != "uncounted" else None, read, written)))
        finally:
            self._resume()

    def _proven(self, frame: list, rule: Rule, kwargs: dict, output: Any) -> bool:
        """A subclass that overrides its base's ``forward`` ran traced: when all it did was torch
        calls of its own, all counted, adding up to the FLOPs the base's rule gives, it computes
        what the base computes and the rule counts it (thop's MACs for norms included). Else its
        traced calls stand."""
        start = frame[5]
        if _not_dense((*frame[3], *kwargs.values()) if kwargs else frame[3]):
            return False  # the rule reads dense shapes
        own = self.records[start:]
        if any(r.function is None or r.status not in ("counted", "free") or r.name != frame[0] for r in own):
            return False
        module = frame[2]
        counts = ZERO if rule.free else self._apply(rule, module, frame[0], _bind(module, frame[3], kwargs), output)
        traced = ZERO
        for r in own:
            traced = traced + Counts(r.macs, r.flops, r.matmul_flops)
        if (counts.flops, counts.matmul_flops) != (traced.flops, traced.matmul_flops):
            return False
        del self.records[start:]
        read, written = _module_traffic(module, self.plan[module][2], frame[3], kwargs, output, self.held)
        self.records.append(_new_record((frame[0], type(module).__name__, None, "free" if rule.free else "counted",
                                         _input_shapes(frame[3], kwargs), shapes_of(output), *counts, rule.name,
                                         read, written)))
        return True

    def _unwind(self, module: nn.Module) -> list | None:
        """Pop ``module``'s frame with the frames left above it; None if it has none."""
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][2] is module:
                frame = self.stack[depth]
                for above in self.stack[depth + 1:]:
                    if above[4] == _ATEN:
                        self._aten_pop()
                del self.stack[depth:]
                return frame
        return None

    def _raised(self, frame: list) -> None:
        """A module raised: it leaves no record; the first module the exception leaves is where it
        happened (the outer ones see the same exception go by)."""
        if frame[4] == _RULED:
            self.suppress -= 1
            if not self.suppress:
                self._resume()
        elif frame[4] == _ATEN:
            self._aten_pop()
        exc = sys.exc_info()[1]
        if self.failure is None or self.failure[1] is not exc:
            self.failure = (frame, exc)

    def _apply(self, rule: Rule, module: nn.Module, name: str, inputs: tuple, output: Any) -> Counts:
        try:
            counts = checked(rule.fn(module, inputs, output))
        except Exception as exc:
            raise self._rule_error(
                f"rule {rule.name} failed on {_layer(name)} ({type(module).__name__}) with input shapes "
                f"{_listed(shapes_of(inputs))}: {exc}"
            ) from exc
        if torch._C._functorch.peek_interpreter_stack() is not None:
            counts = _scaled(counts, _vmap_size(output))
        return counts

    def _rule_error(self, message: str) -> RuleError:
        """A RuleError, remembered: the capture raises it even if the model's forward catches it."""
        self.rule_error = RuleError(message)
        return self.rule_error


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError, TypeError):  # no storage: a functorch wrapper, a sparse tensor
        return None


def _alias(out: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """``"input"`` when ``out`` is one of the call's input tensors, ``"view"`` when it shares an
    input's memory, else None: new memory. Memory, not ``_is_view()``: an aten operator's output
    is not marked as a view yet, an inference tensor's never is, and a view of a call's own result
    (``F.linear`` with a bias on 3-D input) is new memory."""
    inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)] if kwargs else \
        [a for a in args if isinstance(a, torch.Tensor)]
    for a in inputs:
        if out is a:
            return "input"
    storage = _storage(out)
    if storage is None:
        return "view" if out._is_view() else None
    for a in inputs:
        if _storage(a) == storage:
            return "view"
    return None


_SETITEM = torch.Tensor.__setitem__
# embedding bags: (position of the indices, position of the table)
_EMBEDDING_BAGS = {
    F.embedding_bag: (0, 1),
    torch.ops.aten._embedding_bag.default: (1, 0),
    torch.ops.aten._embedding_bag_forward_only.default: (1, 0),
}


def _base_name(func: Any) -> str:
    """``copy_`` for ``torch.Tensor.copy_`` and ``aten.copy_.default``."""
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet if packet is not None else func, "__name__", "")


_INPLACE_SIGNATURES: dict[Any, inspect.Signature | None] = {}  # functions with an inplace parameter


def _writes_in_place(func: Any, args: tuple, kwargs: dict) -> bool:
    """True for a call that writes into its input: ``x.copy_(y)``, ``aten.add_``, or a function
    called with ``inplace=True`` (``F.relu(x, True)``; a dropout only when training); not one that
    changes its metadata only (``x.unsqueeze_(0)``)."""
    name = _base_name(func)
    if name.endswith("_") and not name.startswith("__"):
        return name not in METADATA_IN_PLACE
    try:
        signature = _INPLACE_SIGNATURES[func]
    except KeyError:
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None
        if signature is not None and "inplace" not in signature.parameters:
            signature = None
        _INPLACE_SIGNATURES[func] = signature
    if signature is None:
        return False
    try:
        bound = signature.bind(*args, **kwargs).arguments
    except TypeError:
        return False
    return bound.get("inplace") is True and bound.get("training", True) is not False


def _without_out(kwargs: dict) -> dict:
    """``kwargs`` without ``out=``: a call writes there, it does not read it."""
    return {k: v for k, v in kwargs.items() if k != "out"} if kwargs and "out" in kwargs else kwargs


def _moves(out: Any) -> bool:
    """Whether a call's result may be memory it wrote: a tensor, or a tuple of them (``topk``,
    ``sort``); not a ``torch.Size`` or a number."""
    return isinstance(out, torch.Tensor) or isinstance(out, tuple) and not isinstance(out, torch.Size)


def _copies(func: Any, args: tuple, kwargs: dict, out: Any) -> bool:
    """True when a call with no FLOPs moves bytes: its output is new memory, not a view of an input
    or an input handed back (``x.contiguous()`` of a contiguous ``x``), or it writes in place (into
    its input, or into ``out=``)."""
    if kwargs and kwargs.get("out") is not None:
        return True
    if not isinstance(out, torch.Tensor):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
        if out is None:
            return False
    alias = _alias(out, args, kwargs)
    return alias is None or alias == "input" and _writes_in_place(func, args, kwargs)


def _module_traffic(module: nn.Module, leaf: bool, args: tuple, kwargs: dict, output: Any,
                    held: dict[nn.Module, int]) -> tuple[int, int]:
    """Bytes a module call moved (:mod:`hooks.traffic`); nothing when it handed back a view of an
    input (``Flatten``) or an input untouched (``Identity``, ``Dropout`` in eval): an ``inplace=True``
    module that hands back its input wrote into it, unless it is a dropout in eval. ``held`` caches
    the bytes of each module's parameters and buffers for the capture."""
    if isinstance(output, torch.Tensor):
        # an eager view is marked as one; an inference tensor's views are not
        alias = _alias(output, args, kwargs) if output._is_view() or output.is_inference() else \
            "input" if _passes_through(args, output) else None
        if alias == "view":
            return 0, 0
        if alias == "input" and (not getattr(module, "inplace", False)
                                 or isinstance(module, nn.modules.dropout._DropoutNd) and not module.training):
            return 0, 0
    if isinstance(module, GATHER_MODULES):
        return call_traffic(args, kwargs, output, gather=True)
    if isinstance(module, nn.EmbeddingBag) and args and isinstance(output, torch.Tensor):
        return embedding_bag_traffic(args[0], module.weight, (*args[1:], *kwargs.values()), output)
    params = held.get(module)
    if params is None:
        params = held[module] = traffic(module_tensors(module, leaf), {})
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
        return nbytes(args[0]) + params, nbytes(output)  # most module calls
    read, written = call_traffic(args, kwargs, output)
    return read + params, written


def _scaled(counts: Counts, n: int) -> Counts:
    return counts if n == 1 else Counts(counts.macs * n, counts.flops * n, counts.matmul_flops * n)


_active = threading.local()  # the model a capture or timing pass is running, per thread

# torch warns that global hooks fire once more for a compile wrapper; the capture ignores the wrapper
warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks", category=UserWarning)


def compiled_runs_eagerly() -> contextlib.AbstractContextManager:
    """``torch.compiler.set_stance("force_eager")``, where compiled code can run: a compiled model
    or function runs its Python, which the hooks and modes see; tracing it under them would fail.

    Only when Dynamo is loaded: nothing can have been compiled otherwise, and loading it costs a
    second (see :func:`capture_forward` for a forward that loads it).
    """
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    if set_stance is None or "torch._dynamo" not in sys.modules:
        return nullcontext()
    return set_stance("force_eager")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the body.

    A profiling pass makes many small objects (a record per call): a cyclic collection every few
    hundred of them would scan the whole model each time, so collection waits until it is over.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@contextmanager
def attached(model: nn.Module, pre_hook: Callable | None = None, post_hook: Callable | None = None,
             *, with_kwargs: bool = True, always_call: bool = False,
             modules: Iterable[nn.Module] | None = None, training: bool = False) -> Iterator[None]:
    """Run the body in eval mode without grad, with ``pre_hook``/``post_hook`` on every module call,
    and ``torch.compile``d code run eagerly (hooks see inside it; the arithmetic is the same).
    ``training=True`` runs it in training mode (``model.train()``) with grad enabled instead.

    The hooks are global (``register_module_forward_*_hook``), so nothing is added to the model;
    they see other modules' calls, and other threads', too and must ignore them. ``always_call``
    also runs ``post_hook`` when a module raises (see :meth:`_Recorder.post_hook`). ``modules`` are
    the model's modules if the caller has them at hand. On exit, also by an exception or
    ``KeyboardInterrupt``, the hooks are removed and every module's own ``training`` flag restored
    (with ``training=True``, every parameter's ``requires_grad`` too, which ``train()`` may change).
    """
    if getattr(_active, "model", None) is not None:
        raise RuntimeError(
            "a profile was started while another profile runs in this thread (from inside a forward?); "
            "nested profiling is not supported: profile the inner model on its own"
        )
    held = list({id(m): m for m in (model.modules() if modules is None else modules)}.values())
    handles = []
    holding = False
    _active.model = model
    try:
        if pre_hook is not None:
            handles.append(nn.modules.module.register_module_forward_pre_hook(pre_hook))
        if post_hook is not None:
            handles.append(nn.modules.module.register_module_forward_hook(
                post_hook, with_kwargs=with_kwargs, always_call=always_call))
        if training:
            _hold_for_training(model, held)
        else:
            _hold_in_eval(held)
        holding = True
        with torch.enable_grad() if training else torch.no_grad(), compiled_runs_eagerly():
            yield
    finally:
        _active.model = None
        for handle in handles:
            handle.remove()
            # torch's handle forgets this flag when the hook goes (torch 2.14)
            nn.modules.module._global_forward_hooks_with_kwargs.pop(handle.id, None)
        if holding:
            _release(held)


# module id -> [module, its own training flag, profiles holding it, held for training, the
# requires_grad of its own parameters (training only)]. Two threads may profile one model at once:
# the first saves the flags, the last restores them. A training profile, which runs a backward and
# sets the model's gradients, holds a model alone.
_held: dict[int, list] = {}
_held_lock = threading.Lock()
_BUSY = ("is being profiled in another thread{}; profile_training runs a backward that sets the model's "
         "gradients, so it needs the model alone: profile one at a time")


def _hold_in_eval(modules: list[nn.Module]) -> None:
    """Save each module's ``training`` flag unless another profile holds it, then set it False:
    the flag itself, not ``eval()``, which exported modules refuse."""
    with _held_lock:
        if any(_held.get(id(module), (0, 0, 0, False))[3] for module in modules):
            raise RuntimeError("the model " + _BUSY.format(" by profile_training"))
        for module in modules:
            entry = _held.get(id(module))
            if entry is None:
                _held[id(module)] = [module, module.training, 1, False, None]
            else:
                entry[2] += 1
            if module.training:
                module.training = False


def _hold_for_training(model: nn.Module, modules: list[nn.Module]) -> None:
    """Save each module's ``training`` flag and its parameters' ``requires_grad``, then call
    ``model.train()``, which a model may override (to keep a frozen backbone's BatchNorm in eval
    mode, or to unfreeze a backbone): what a training loop does. A model that refuses ``train()``
    (an exported one) gets the flags set directly."""
    with _held_lock:
        if any(id(module) in _held for module in modules):
            raise RuntimeError("the model " + _BUSY.format(""))
        for module in modules:
            grads = {name: p.requires_grad for name, p in module._parameters.items() if p is not None}
            _held[id(module)] = [module, module.training, 1, True, grads]
    try:
        try:
            model.train()
        except NotImplementedError:
            for module in modules:
                module.training = True
    except BaseException:
        _release(modules)
        raise


def _release(modules: list[nn.Module]) -> None:
    """The last profile holding a module restores its own ``training`` flag, and the
    ``requires_grad`` of the parameters it held (``train()`` may have changed them)."""
    with _held_lock:
        for module in modules:
            entry = _held.get(id(module))
            if entry is None:  # not held: the body never ran
                continue
            entry[2] -= 1
            if not entry[2]:
                del _held[id(module)]
                if module.training != entry[1]:
                    module.training = entry[1]
                for name, requires_grad in (entry[4] or {}).items():
                    p = module._parameters.get(name)
                    if p is not None and p.requires_grad != requires_grad:
                        p.requires_grad_(requires_grad)


def capture_forward(model: nn.Module, call: Callable[[], Any], resolver: Resolver, *, functions: bool = True) -> Capture:
    """Run ``call()`` (one forward of ``model``) with hooks attached, in eval mode, without grad.

    Every hook is removed and every module's ``training`` flag restored before returning, also
    when ``call`` raises; a forward that raises is re-raised as :class:`CaptureError` naming the
    innermost layer that was running, with the original exception chained. ``functions=False``
    leaves the function mode out: torch functions called in ``forward`` bodies are not seen (the
    benchmark uses it to tell the hooks' cost from the mode's).

    A forward that loads Dynamo as it runs (``torch.cond`` and ``flex_attention`` compile on their
    first call) fails under the hooks, which Dynamo cannot trace; it runs once more, with
    compiled code eager (:func:`compiled_runs_eagerly`).
    """
    dynamo_loaded = "torch._dynamo" in sys.modules
    try:
        return _capture_once(model, call, resolver, functions)
    except CaptureError:
        if dynamo_loaded or "torch._dynamo" not in sys.modules:
            raise
    return _capture_once(model, call, resolver, functions)


def _capture_once(model: nn.Module, call: Callable[[], Any], resolver: Resolver, functions: bool) -> Capture:
    with gc_paused():
        notes: list[str] = []
        planned = _plan(model, resolver, notes)
        recorder = _Recorder(resolver.function_rules, planned)
        started = False  # attached() refuses a model another profile holds before anything runs
        try:
            try:
                with attached(model, recorder.pre_hook, recorder.post_hook, always_call=True,
                              modules=list({id(p.module): p.module for p in planned}.values())), \
                        recorder if functions else nullcontext():
                    started = True
                    _active.recorder = recorder
                    output = call()
            finally:
                _active.recorder = None
                recorder.close()
        except RuleError:
            raise
        except Exception as exc:
            if not started:
                raise
            raise _capture_error(recorder, exc) from exc
        if recorder.rule_error is not None:  # the forward caught it
            raise recorder.rule_error
        return Capture(_module_infos(planned), tuple(recorder.records), tuple(recorder.other_threads), tuple(notes),
                       recorder.ran_nothing, _lazy(output))


# iterators over a container: what they yield was computed before the forward returned
_DONE_ITERATORS = frozenset(type(iter(c)) for c in ((), [], range(0), {}, {}.values(), {}.items(), set(), "", b""))


def _lazy(output: Any) -> str:
    """The type's name of an iterator that does its work as it is consumed (a generator, ``map``,
    ``zip`` of those), else ``""``."""
    if isinstance(output, Iterator) and type(output) not in _DONE_ITERATORS:
        return type(output).__name__
    return ""


def record_traffic(name: str, bytes_read: int, bytes_written: int) -> None:
    """Charge bytes the capture does not see to the innermost running layer of this thread's
    capture, as a free call named ``name`` (no FLOPs): work run with the function mode off, such as
    a KV cache's update that ``profile_generation`` counts as a write of the new entries only."""
    recorder = getattr(_active, "recorder", None)
    if recorder is None or not recorder.stack or recorder.suppress:
        return
    recorder.records.append(_new_record((
        recorder.stack[-1][0], name, name, "free", (), (), 0, 0, 0, "free", bytes_read, bytes_written)))


def _capture_error(recorder: _Recorder, exc: BaseException) -> CaptureError:
    """The error for a forward that raised ``exc``, naming the layer where it happened if known
    (not for an error a layer caught)."""
    failed = recorder.failure[0][:4] if recorder.failure is not None and recorder.failure[1] is exc else None
    return forward_error(exc, failed)


def forward_error(exc: BaseException, failed: tuple | None, during: str = "") -> CaptureError:
    """The error for a forward that raised ``exc``: ``failed`` is ``(name, _, module, args)`` of the
    innermost layer that was running, if known; ``during`` says which pass it was."""
    where = ""
    if failed is not None:
        name, _, module, args = failed
        where = f" while running {_layer(name)} ({type(module).__name__}) with input shapes {_listed(shapes_of(args))}"
    return CaptureError(f"the model's forward raised {type(exc).__name__}{during}{where}: {exc}")


def modules_by_name(model: nn.Module, resolver: Resolver) -> dict[str, nn.Module]:
    """Every layer a capture of ``model`` names (a shared module under each of its names)."""
    return {p.name: p.module for p in _plan(model, resolver)}
