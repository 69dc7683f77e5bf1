"""Small helpers shared by the rule families."""

from __future__ import annotations

from typing import Any

__all__ = ["arg"]

_MISSING = object()


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = _MISSING) -> Any:
    """A torch function's argument by position or by keyword."""
    if index < len(args):
        return args[index]
    if name in kwargs:
        return kwargs[name]
    if default is _MISSING:
        raise TypeError(f"missing argument {name!r}")
    return default
