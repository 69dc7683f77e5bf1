"""hookprof: thop's one-line ``profile()``, counting attention, torch functions and every layer."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from hooks import CaptureError, Counts, LossError, RuleError, function_rule, module_rule
from profiler.api import UncountedError, UncountedWarning, profile
from profiler.compare import Comparison, compare_with_thop
from profiler.generation import GenerationResult, GenerationRoofline, GenerationStep, profile_generation
from profiler.result import ProfileResult, RooflineResult
from profiler.roofline import DEVICES, Device
from profiler.training import StepMemory, TrainingResult, TrainingRoofline, profile_training
from profiler.tree import Layer
from profiler.units import clever_format

try:
    __version__ = version("hookprof")  # pyproject.toml's version, the one source of truth
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CaptureError",
    "Comparison",
    "Counts",
    "DEVICES",
    "Device",
    "GenerationResult",
    "GenerationRoofline",
    "GenerationStep",
    "Layer",
    "LossError",
    "ProfileResult",
    "RooflineResult",
    "StepMemory",
    "TrainingResult",
    "TrainingRoofline",
    "RuleError",
    "UncountedError",
    "UncountedWarning",
    "clever_format",
    "compare_with_thop",
    "function_rule",
    "module_rule",
    "profile",
    "profile_generation",
    "profile_training",
]
