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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from hooks.counts import ZERO, Counts
from hooks.records import Record, Shape
from hooks.registry import Resolver, Rule

__all__ = [
    "ModuleInfo", "Capture", "CaptureError", "RuleError", "attached", "capture_forward", "gc_paused", "shapes_of",
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


class RuleError(RuntimeError):
    """A counting rule raised or returned something that is not counts."""


class CaptureError(RuntimeError):
    """The model's forward raised; the message names the innermost layer that was running."""


def shapes_of(value: Any) -> tuple[Shape, ...]:
    """Shapes of the tensors in ``value``, searched through tuples, lists and dicts.

    Each shape is the tensor's ``torch.Size``, an immutable tuple of ints, kept as it is.
    """
    if isinstance(value, torch.Tensor):
        return (value.shape,)
    if isinstance(value, dict):
        value = tuple(value.values())
    if isinstance(value, (tuple, list)):
        shapes = []  # a loop, not nested generators: this runs on every module call
        for item in value:
            if isinstance(item, torch.Tensor):
                shapes.append(item.shape)
            elif isinstance(item, (tuple, list, dict)):
                shapes.extend(shapes_of(item))
        return tuple(shapes)
    return ()


def _new_record(fields: tuple) -> Record:
    """``Record(*fields)`` at half the cost: the hooks make one per module call."""
    return tuple.__new__(Record, fields)


def _input_shapes(args: tuple, kwargs: dict) -> tuple[Shape, ...]:
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):  # most module calls
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


def _plan(model: nn.Module, resolver: Resolver) -> list[_Planned]:
    """The names and order of ``nn.Module.named_modules()``, each module with its rule; a module
    under a ruled ancestor is covered and gets no hooks. Without a generator per module: a third of
    the cost (a class's own override of ``named_modules()`` is not consulted)."""
    planned = [_Planned("", model, resolver.module_rule(type(model)), False)]
    _visit(model, "", planned[0].rule is not None, resolver, planned, {model})
    return planned


def _visit(module: nn.Module, prefix: str, covered: bool, resolver: Resolver, planned: list, seen: set) -> None:
    for name, child in module._modules.items():
        if child is None or child in seen:
            continue
        seen.add(child)
        rule = None if covered else resolver.module_rule(type(child))
        planned.append(_Planned(prefix + name, child, rule, covered))
        if child._modules:
            _visit(child, prefix + name + ".", covered or rule is not None, resolver, planned, seen)


def _module_infos(planned: list[_Planned]) -> tuple[ModuleInfo, ...]:
    """Facts read after the forward, when lazy modules have their parameters and final class."""
    owners: dict[int, tuple[int, nn.Parameter]] = {}  # each parameter's first module, by position
    for position, p in enumerate(planned):
        # _parameters is parameters(recurse=False) without a generator per module
        for parameter in p.module._parameters.values():
            if parameter is not None:
                owners.setdefault(id(parameter), (position, parameter))
    params = [0] * len(planned)
    for position, parameter in owners.values():
        params[position] += parameter.numel()
    return tuple([
        ModuleInfo(p.name, type(p.module).__name__, count, p.rule.name if p.rule else None, p.covered)
        for p, count in zip(planned, params)
    ])


_RAISED = object()  # what post_hook sees as output when the module raised


class _Recorder(TorchFunctionMode):
    """Holds the running-module stack and the records; counts torch functions as they run."""

    def __init__(self, function_rules: dict[Callable, Rule], planned: Iterable[_Planned]) -> None:
        super().__init__()
        self.function_rules = function_rules
        self.records: list[Record] = []
        self.stack: list[list] = []  # [name, functions seen, module, args, ruled] per running module
        self.suppress = 0  # ruled modules running: their rules count everything they call
        self.paused = False  # off the mode stack while a ruled module runs
        self.names: dict[Callable, str] = {}
        self.thread = threading.get_ident()  # global hooks see other threads' module calls too
        self.failure: tuple[list, BaseException] | None = None  # (frame, exception) where the forward raised
        self.rule_error: RuleError | None = None
        self.other_threads: list[str] = []  # layers called from other threads meanwhile
        # name, rule, is a leaf; modules covered by a ruled ancestor are left out
        self.plan: dict[nn.Module, tuple[str, Rule | None, bool]] = {
            p.module: (p.name, p.rule, not p.module._modules or next(p.module.children(), None) is None)
            for p in planned if not p.covered
        }

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

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self._resume()  # a ruled module that raised never resumed
        super().__exit__(exc_type, exc_value, traceback)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.suppress or not self.stack:
            return out
        frame = self.stack[-1]
        frame[1] += 1
        rule = self.function_rules.get(func)
        if rule is not None and rule.free or not _is_floating(out):  # integer and boolean work is free
            return out
        with torch._C.DisableTorchFunction():
            name = self.names.get(func) or self.names.setdefault(func, _function_name(func))
            if rule is None:
                counts, status, rule_name = ZERO, "uncounted", None
            else:
                try:
                    counts = rule.fn(args, kwargs, out)
                except Exception as exc:
                    raise self._rule_error(
                        f"rule {rule.name} failed on {name} in {_layer(frame[0])} with input "
                        f"shapes {_listed(shapes_of(args))}: {exc}"
                    ) from exc
                status, rule_name = "counted", rule.name
            self.records.append(
                Record(frame[0], name, name, status, shapes_of(args), shapes_of(out),
                       counts.macs, counts.flops, counts.matmul_flops, rule_name)
            )
        return out

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        entry = self.plan.get(module)
        if entry is None:
            return
        if threading.get_ident() != self.thread:
            self.other_threads.append(entry[0])  # list.append is atomic: threads may race here
            return
        if entry[1] is None:
            if not self.suppress:  # else inside a ruled module, whose rule counts this call
                self.stack.append([entry[0], 0, module, args, False])
            return
        self.stack.append([entry[0], 0, module, args, True])
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
        name, rule, leaf = entry
        if output is _RAISED:
            self._raised(frame)
            return
        if rule is None:
            status = "uncounted" if leaf and frame[1] == 0 and not _passes_through(args, output) else "traced"
            with torch._C.DisableTorchFunction():  # the mode is on: keep this hook's calls out of it
                self.records.append(_new_record((name, type(module).__name__, None, status,
                                                 _input_shapes(args, kwargs), shapes_of(output), 0, 0, 0, None)))
            return
        self.suppress -= 1
        if self.suppress:  # a ruled module inside another: the outer rule counts this call
            return
        try:  # the mode is still paused: torch calls from here on are not counted
            if rule.free:
                counts, status = ZERO, "free"
            else:
                counts, status = self._apply(rule, module, name, _bind(module, args, kwargs), output), "counted"
            self.records.append(_new_record((name, type(module).__name__, None, status,
                                             _input_shapes(args, kwargs), shapes_of(output), *counts, rule.name)))
        finally:
            self._resume()

    def _unwind(self, module: nn.Module) -> list | None:
        """Pop ``module``'s frame with the frames left above it; None if it has none."""
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][2] is module:
                frame = self.stack[depth]
                del self.stack[depth:]
                return frame
        return None

    def _raised(self, frame: list) -> None:
        """A module raised: it leaves no record; the first module the exception leaves is where it
        happened (the outer ones see the same exception go by)."""
        if frame[4]:
            self.suppress -= 1
            if not self.suppress:
                self._resume()
        exc = sys.exc_info()[1]
        if self.failure is None or self.failure[1] is not exc:
            self.failure = (frame, exc)

    def _apply(self, rule: Rule, module: nn.Module, name: str, inputs: tuple, output: Any) -> Counts:
        try:
            counts = rule.fn(module, inputs, output)
        except Exception as exc:
            raise self._rule_error(
                f"rule {rule.name} failed on {_layer(name)} ({type(module).__name__}) with input shapes "
                f"{_listed(shapes_of(inputs))}: {exc}"
            ) from exc
        if not isinstance(counts, Counts):
            raise self._rule_error(
                f"rule {rule.name} returned {type(counts).__name__} on {_layer(name)} "
                f"({type(module).__name__}); a rule returns Counts"
            )
        return counts

    def _rule_error(self, message: str) -> RuleError:
        """A RuleError, remembered: the capture raises it even if the model's forward catches it."""
        self.rule_error = RuleError(message)
        return self.rule_error


_active = threading.local()  # the model a capture or timing pass is running, per thread


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
             modules: Iterable[nn.Module] | None = None) -> Iterator[None]:
    """Run the body in eval mode without grad, with ``pre_hook``/``post_hook`` on every module call.

    The hooks are global (``register_module_forward_*_hook``), so nothing is added to the model;
    they see other modules' calls, and other threads', too and must ignore them. ``always_call``
    also runs ``post_hook`` when a module raises (see :meth:`_Recorder.post_hook`). ``modules`` are
    the model's modules if the caller has them at hand. On exit, also by an exception or
    ``KeyboardInterrupt``, the hooks are removed and every module's own ``training`` flag restored.
    """
    if getattr(_active, "model", None) is not None:
        raise RuntimeError(
            "profile() was called while another profile() runs in this thread (from inside a forward?); "
            "nested profiling is not supported: profile the inner model on its own"
        )
    modes = [(module, module.training) for module in (model.modules() if modules is None else modules)]
    handles = []
    _active.model = model
    try:
        if pre_hook is not None:
            handles.append(nn.modules.module.register_module_forward_pre_hook(pre_hook))
        if post_hook is not None:
            handles.append(nn.modules.module.register_module_forward_hook(
                post_hook, with_kwargs=with_kwargs, always_call=always_call))
        if any(training for _, training in modes):
            model.eval()
        with torch.no_grad():
            yield
    finally:
        _active.model = None
        for handle in handles:
            handle.remove()
            # torch's handle forgets this flag when the hook goes (torch 2.14)
            nn.modules.module._global_forward_hooks_with_kwargs.pop(handle.id, None)
        for module, training in modes:
            if module.training != training:
                module.training = training


def capture_forward(model: nn.Module, call: Callable[[], Any], resolver: Resolver, *, functions: bool = True) -> Capture:
    """Run ``call()`` (one forward of ``model``) with hooks attached, in eval mode, without grad.

    Every hook is removed and every module's ``training`` flag restored before returning, also
    when ``call`` raises; a forward that raises is re-raised as :class:`CaptureError` naming the
    innermost layer that was running, with the original exception chained. ``functions=False``
    leaves the function mode out: torch functions called in ``forward`` bodies are not seen (the
    benchmark uses it to tell the hooks' cost from the mode's).
    """
    with gc_paused():
        planned = _plan(model, resolver)
        recorder = _Recorder(resolver.function_rules, planned)
        try:
            with attached(model, recorder.pre_hook, recorder.post_hook, always_call=True,
                          modules=[p.module for p in planned]), recorder if functions else nullcontext():
                call()
        except RuleError:
            raise
        except Exception as exc:
            where = ""
            if recorder.failure is not None and recorder.failure[1] is exc:  # not one a layer caught
                name, _, module, args, _ = recorder.failure[0]
                shapes = _listed(shapes_of(args))
                where = f" while running {_layer(name)} ({type(module).__name__}) with input shapes {shapes}"
            raise CaptureError(f"the model's forward raised {type(exc).__name__}{where}: {exc}") from exc
        if recorder.rule_error is not None:  # the forward caught it
            raise recorder.rule_error
        return Capture(_module_infos(planned), tuple(recorder.records), tuple(recorder.other_threads))
