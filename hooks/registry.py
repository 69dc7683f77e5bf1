"""The registry of counting rules: module rules looked up along the MRO, function rules by identity.

A module rule is a pure function ``rule(module, inputs, output) -> Counts`` that reads shapes and
module attributes, never data. A function rule is ``rule(args, kwargs, output) -> Counts`` for one
torch function call. Registering a second rule for the same type or function raises. Per-call
overrides (thop's ``custom_ops``) sit on top of the registry in a :class:`Resolver` and never change
it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hooks.counts import ZERO, Counts, count_value

__all__ = [
    "Rule",
    "Registry",
    "Resolver",
    "REGISTRY",
    "module_rule",
    "function_rule",
    "free_modules",
    "free_functions",
    "custom_rule",
]

ModuleRuleFn = Callable[[nn.Module, tuple, Any], Counts]
FunctionRuleFn = Callable[[tuple, dict, Any], Counts]


@dataclass(frozen=True, slots=True)
class Rule:
    """A named counting rule; ``free`` rules count 0 by decision and are never called.

    ``thop`` says where thop 0.1.1's number for the same types is wrong, for comparisons.
    """

    name: str
    fn: Callable[..., Counts] | None = None
    free: bool = False
    thop: str | None = None


FREE = Rule(name="free", free=True)


class Registry:
    """Module rules keyed by type and function rules keyed by the function object."""

    def __init__(self) -> None:
        self.module_rules: dict[type, Rule] = {}
        self.function_rules: dict[Callable, Rule] = {}

    def add_module_rule(self, types: Iterable[type], rule: Rule) -> None:
        """Register ``rule`` for each type; a type may have one rule only."""
        types = tuple(types)
        for t in types:
            if not (isinstance(t, type) and issubclass(t, nn.Module)):
                raise TypeError(f"module rule {rule.name}: {t!r} is not an nn.Module subclass")
            if t in self.module_rules:
                raise ValueError(
                    f"{t.__qualname__} already has the rule {self.module_rules[t].name}; "
                    f"refusing {rule.name}"
                )
        for t in types:
            self.module_rules[t] = rule

    def add_function_rule(self, functions: Iterable[Callable], rule: Rule) -> None:
        """Register ``rule`` for each torch function; a function may have one rule only."""
        functions = tuple(functions)
        for f in functions:
            if not callable(f):
                raise TypeError(f"function rule {rule.name}: {f!r} is not callable")
            if f in self.function_rules:
                raise ValueError(
                    f"{_function_name(f)} already has the rule {self.function_rules[f].name}; "
                    f"refusing {rule.name}"
                )
        for f in functions:
            self.function_rules[f] = rule

    def module_rule(self, *types: type, thop: str | None = None) -> Callable[[ModuleRuleFn], ModuleRuleFn]:
        """Decorator: ``@module_rule(nn.Conv1d, nn.Conv2d)`` over ``fn(module, inputs, output)``;
        ``thop`` names where thop's number for these types is wrong."""

        def register(fn: ModuleRuleFn) -> ModuleRuleFn:
            self.add_module_rule(types, Rule(name=fn.__name__, fn=fn, thop=thop))
            return fn

        return register

    def function_rule(self, *functions: Callable) -> Callable[[FunctionRuleFn], FunctionRuleFn]:
        """Decorator: ``@function_rule(torch.matmul, torch.Tensor.matmul)`` over ``fn(args, kwargs, out)``."""

        def register(fn: FunctionRuleFn) -> FunctionRuleFn:
            self.add_function_rule(functions, Rule(name=fn.__name__, fn=fn))
            return fn

        return register

    def free_modules(self, *types: type) -> None:
        """Declare module types that do no floating-point work (0 by decision)."""
        self.add_module_rule(types, FREE)

    def free_functions(self, *functions: Callable) -> None:
        """Declare torch functions that do no floating-point work (views, indexing, copies...)."""
        self.add_function_rule(functions, FREE)

    def resolver(self, overrides: Mapping[type, Rule] | None = None) -> Resolver:
        """A lookup over this registry with per-call ``overrides`` on top."""
        return Resolver(self, dict(overrides or {}))


@dataclass
class Resolver:
    """Rule lookup for one profiling call: overrides first, then the registry, along the MRO."""

    registry: Registry
    overrides: dict[type, Rule]
    _cache: dict[type, tuple[Rule | None, bool]] = field(default_factory=dict)

    def module_rule(self, module_type: type) -> Rule | None:
        """The rule of the most specific class in ``module_type``'s MRO that has one."""
        return self.lookup(module_type)[0]

    def lookup(self, module_type: type) -> tuple[Rule | None, bool]:
        """``(rule, unproven)``: the rule of the most specific class in the MRO that has one, and
        whether ``module_type`` (or a class between) overrides that class's ``forward``.

        An unproven rule may not describe what the subclass computes (a LoRA ``Linear`` adding a
        low-rank product, a norm applying an activation): the capture traces such a module's own
        calls and uses the rule only if they come to the same FLOPs.
        """
        try:
            return self._cache[module_type]
        except KeyError:
            pass
        found: tuple[Rule | None, bool] = (None, False)
        for cls in module_type.__mro__:
            if cls is nn.Module:
                break
            rule = self.overrides.get(cls) or self.registry.module_rules.get(cls)
            if rule is not None:
                found = (rule, getattr(module_type, "forward", None) is not getattr(cls, "forward", None))
                break
        self._cache[module_type] = found
        return found

    @property
    def function_rules(self) -> dict[Callable, Rule]:
        return self.registry.function_rules


class _ThopModule:
    """Stands in for a module when a thop-style rule runs: the rule may do ``m.total_ops += n``.

    Attribute reads go to the real module; ``total_ops``/``total_params`` live here, so nothing is
    ever written on the user's module. ``isinstance`` sees the real module's class.
    """

    def __init__(self, module: nn.Module) -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "total_ops", torch.zeros(1, dtype=torch.float64))
        object.__setattr__(self, "total_params", torch.zeros(1, dtype=torch.float64))

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(object.__getattribute__(self, "_module"))

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_module"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in ("total_ops", "total_params"):
            raise AttributeError(f"a counting rule may not set {name!r} on the module")
        object.__setattr__(self, name, value)


def custom_rule(fn: Callable) -> Rule:
    """Wrap a user rule with thop's signature ``fn(module, inputs, output)``.

    The rule may return :class:`Counts`, a number of MACs (taken as matmul-like work: 2 FLOPs
    per MAC), or nothing after adding to ``module.total_ops`` as thop rules do.
    """
    name = getattr(fn, "__qualname__", None) or repr(fn)

    def run(module: nn.Module, inputs: tuple, output: Any) -> Counts:
        stand_in = _ThopModule(module)
        returned = fn(stand_in, inputs, output)
        if returned is None:
            returned = object.__getattribute__(stand_in, "total_ops")
        return as_counts(returned, "the rule")

    return Rule(name=name, fn=run)


def as_counts(value: Any, source: str) -> Counts:
    """Turn what a custom rule returned into :class:`Counts`, or raise naming ``source``.

    A number is MACs of matmul-like work (any integer, numpy's too, or a float with an integral
    value); a one-element tensor is read as that number. The capture checks the result again.
    """
    if isinstance(value, Counts):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta:
        value = value.item()
    try:
        macs = count_value(value, "MACs")
    except TypeError:
        raise TypeError(
            f"{source} returned {type(value).__name__}; expected Counts, a number of MACs, "
            "or None after adding to module.total_ops"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{source} returned {value!r}: {exc}") from None
    return Counts.matmul(macs) if macs else ZERO


def _function_name(f: Callable) -> str:
    return torch.overrides.resolve_name(f) or getattr(f, "__qualname__", repr(f))


REGISTRY = Registry()
module_rule = REGISTRY.module_rule
function_rule = REGISTRY.function_rule
free_modules = REGISTRY.free_modules
free_functions = REGISTRY.free_functions
