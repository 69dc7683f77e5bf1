"""Small helpers shared by the rule families, and the one place that reads torch's signatures."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

__all__ = ["arg", "positional", "signature_of"]

_MISSING = object()
_EMPTY = inspect.Parameter.empty


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = _MISSING) -> Any:
    """A torch function's argument by position or by keyword."""
    if index < len(args):
        return args[index]
    if name in kwargs:
        return kwargs[name]
    if default is _MISSING:
        raise TypeError(f"missing argument {name!r}")
    return default


@cache
def _testing_overrides() -> dict[Callable, Callable]:
    # torch's own table of every overridable function with a lambda of its Python signature
    return torch.overrides.get_testing_overrides()


def _schema_parameters(schemas: list, input_name: str = "self") -> tuple[tuple[str, Any], ...] | None:
    """The positional parameters every overload agrees on, ``self`` named ``input_name``.

    The longest overload's, cut before the first one that another overload names differently or
    takes by keyword only (``add.Scalar``'s ``alpha``); a default the overloads disagree on is dropped.
    """
    lists = [[(a.name, a.default_value if a.has_default_value() else _EMPTY)
              for a in s.arguments if not a.kwarg_only] for s in schemas]
    if not lists:
        return None
    keyword_only = {a.name for s in schemas for a in s.arguments if a.kwarg_only}
    params = []
    for i, (name, default) in enumerate(max(lists, key=len)):
        others = [p[i] for p in lists if len(p) > i]
        if name in keyword_only or any(other != name for other, _ in others):
            break
        if any(type(d) is not type(default) or d != default for _, d in others):
            default = _EMPTY
        params.append((input_name if name == "self" else name, default))
    return tuple(params)


def _operator_schemas(packet: Any) -> list:
    """The schemas of an operator packet's overloads that the dispatcher runs (not TorchScript's
    scalar ones such as ``aten::pow.int``)."""
    schemas = []
    for overload in packet.overloads():
        try:
            name = "" if overload == "default" else overload
            torch._C._dispatch_find_schema_or_throw(packet._qualified_op_name, name)
            schemas.append(getattr(packet, overload)._schema)
        except (AttributeError, RuntimeError):
            continue
    return schemas


@cache
def signature_of(func: Callable) -> tuple[tuple[str, Any], ...] | None:
    """The positional parameters of ``func`` as ``(name, default)`` pairs, by torch's own signature.

    Sources, in order: an operator's schema (``torch.ops`` overloads and packets); a Python
    function's own signature; for a builtin such as ``torch.baddbmm``, ``Tensor.addmv_`` or
    ``F.leaky_relu_``, the schemas of the aten operator of its name, as torch's argument parser
    reads them (``self`` is ``input``); then torch's table of overridable functions
    (``torch.overrides.get_testing_overrides``, whose hand-written names can be wrong:
    ``torch.xlogy(x, y)``, ``Tensor.__rpow__(exponent)``). None when no signature is known.
    """
    schema = getattr(func, "_schema", None)
    if schema is not None:
        return _schema_parameters([schema])
    if isinstance(func, torch._ops.OpOverloadPacket):
        return _schema_parameters(_operator_schemas(func))
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if inspect.isfunction(inspect.unwrap(func)):
        parameters = inspect.signature(func).parameters.values()
        if any(p.kind in kinds for p in parameters) or func not in _testing_overrides():
            return tuple((p.name, p.default) for p in parameters if p.kind in kinds)
    elif inspect.isbuiltin(func) or inspect.ismethoddescriptor(func):
        name = getattr(func, "__name__", "")
        try:
            packet = getattr(torch.ops.aten, name) if name and not name.startswith("__") else None
        except (AttributeError, RuntimeError):
            packet = None
        if isinstance(packet, torch._ops.OpOverloadPacket):
            params = _schema_parameters(_operator_schemas(packet), "input")
            if params:
                return params
    try:
        parameters = inspect.signature(_testing_overrides().get(func, func)).parameters.values()
    except (TypeError, ValueError):
        return None
    return tuple((p.name, p.default) for p in parameters if p.kind in kinds)


def positional(func: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every argument that has a position moved to it, by ``func``'s
    signature: ``torch.baddbmm(x, batch1=a, batch2=b)`` becomes ``((x, a, b), {})``.

    Gaps before a keyword are filled with their defaults; keyword-only arguments stay in
    ``kwargs``. Rules then read positional parameters by index, whichever way they were passed.
    Unchanged when the signature is unknown or does not name the keywords.
    """
    params = signature_of(func)
    if not params or not kwargs:
        return args, kwargs
    last = max((i for i, (name, _) in enumerate(params) if name in kwargs), default=-1)
    if last < len(args):
        return args, kwargs
    rest = dict(kwargs)
    filled = list(args)
    for name, default in params[len(args):last + 1]:
        if name in rest:
            filled.append(rest.pop(name))
        elif default is not _EMPTY:
            filled.append(default)
        else:
            return args, kwargs  # a required argument is missing: leave the call as it was
    return tuple(filled), rest
