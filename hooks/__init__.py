"""Counting rules for module types and torch functions, and the capture that applies them.

Importing this package registers the built-in rules in :data:`REGISTRY`.
"""

from __future__ import annotations

from hooks import rules as _rules  # noqa: F401  (registers the built-in rules)
from hooks.backward import LossError, capture_step, tensors_in
from hooks.capture import Capture, CaptureError, ModuleInfo, RuleError, capture_forward, shapes_of
from hooks.counts import ZERO, Counts
from hooks.records import Record, Shape, Status
from hooks.registry import (
    REGISTRY,
    Registry,
    Resolver,
    Rule,
    as_counts,
    custom_rule,
    free_functions,
    free_modules,
    function_rule,
    module_rule,
)

__all__ = [
    "Capture",
    "CaptureError",
    "LossError",
    "Counts",
    "ModuleInfo",
    "REGISTRY",
    "Record",
    "Registry",
    "Resolver",
    "Rule",
    "RuleError",
    "Shape",
    "Status",
    "ZERO",
    "as_counts",
    "capture_forward",
    "capture_step",
    "custom_rule",
    "free_functions",
    "free_modules",
    "function_rule",
    "module_rule",
    "shapes_of",
    "tensors_in",
]
