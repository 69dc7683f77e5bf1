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


@cache
def signature_of(func: Callable) -> tuple[tuple[str, Any], ...] | None:
    """The positional parameters of ``func`` as ``(name, default)`` pairs, by torch's own signature.

    Sources, in order: an operator's schema (``torch.ops`` overloads), torch's table of overridable
    functions (``torch.overrides.get_testing_overrides``, which names the arguments of builtins
    such as ``torch.baddbmm`` and ``Tensor.addmv``), then ``inspect``; an in-place ``foo_`` takes
    ``foo``'s. None when no signature is known.
    """
    schema = getattr(func, "_schema", None)
    if schema is not None:
        return tuple((a.name, a.default_value if a.has_default_value() else _EMPTY)
                     for a in schema.arguments if not a.kwarg_only)
    target = _testing_overrides().get(func, func)
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None) or getattr(func, "__objclass__", None)
        if name.endswith("_") and not name.endswith("__") and owner is not None:
            plain = getattr(owner, name[:-1], None)
            if plain is not None and plain is not func:
                return signature_of(plain)
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
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
