"""The value every rule returns: MACs and FLOPs of one call, as exact Python ints.

Conventions (the README's table lists them per module type and function):
- ``macs``: multiply-accumulates of matmul-like work (linear, conv, matmul, attention). For the
  module types thop counts beyond those (norms, softmax, pooling, upsampling, RNN gates), ``macs``
  carries thop's number, so per-layer MACs equal thop's.
- ``flops``: floating-point operations, 2 per MAC of matmul-like work plus a documented count
  per element for elementwise work.
- ``matmul_flops``: the part of ``flops`` spent in matmul-like work; it is what
  ``torch.utils.flop_counter.FlopCounterMode`` counts.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, NamedTuple

__all__ = ["Counts", "ZERO", "checked", "count_value"]


class Counts(NamedTuple):
    """MACs and FLOPs of one call.

    A NamedTuple rather than a frozen dataclass: rules make one per call on the hot path, at a
    third of the cost. ``+`` adds counts field by field and ``counts * n`` is refused; it still
    compares equal to the plain tuple ``(macs, flops, matmul_flops)``.
    """

    macs: int = 0
    flops: int = 0
    matmul_flops: int = 0

    @classmethod
    def matmul(cls, macs: int) -> Counts:
        """Matmul-like work: each MAC is one multiply and one add."""
        return tuple.__new__(cls, (macs, 2 * macs, 2 * macs))  # the generated __new__ costs twice as much

    @classmethod
    def elementwise(cls, flops: int, macs: int = 0) -> Counts:
        """Elementwise work; ``macs`` is thop's number for module types thop counts."""
        return tuple.__new__(cls, (macs, flops, 0))

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(
            self.macs + other.macs,
            self.flops + other.flops,
            self.matmul_flops + other.matmul_flops,
        )

    def __mul__(self, other: object) -> Counts:
        return NotImplemented  # a tuple would repeat itself: counts * 2 is a TypeError

    __rmul__ = __mul__


ZERO = Counts()


def count_value(value: Any, field: str) -> int:
    """One count as a Python int: any integer (numpy's too) >= 0, or a float with an integral
    value; anything else raises ValueError (or TypeError) saying what it was."""
    if type(value) is int and value >= 0:  # what built-in rules return: the fast path
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{field} is {value!r} ({type(value).__name__}), not a number")
    if not isinstance(value, Integral):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{field} is {value!r}, not a whole number")
    value = int(value)
    if value < 0:
        raise ValueError(f"{field} is {value}, below 0")
    return value


def checked(counts: Any) -> Counts:
    """``counts`` as :class:`Counts` of non-negative ints with ``flops >= matmul_flops``, or
    ValueError/TypeError naming the bad value: every rule's result goes through here."""
    if not isinstance(counts, Counts):
        raise TypeError(f"it returned {type(counts).__name__}; a rule returns Counts")
    macs, flops, matmul_flops = counts
    if type(macs) is not int or type(flops) is not int or type(matmul_flops) is not int or macs < 0 or matmul_flops < 0:
        macs, flops, matmul_flops = (count_value(v, f) for v, f in zip(counts, Counts._fields))
        counts = tuple.__new__(Counts, (macs, flops, matmul_flops))
    if flops < matmul_flops:
        raise ValueError(f"flops {flops} are fewer than matmul_flops {matmul_flops}, which they include")
    return counts
