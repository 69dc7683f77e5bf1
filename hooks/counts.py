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

from typing import NamedTuple

__all__ = ["Counts", "ZERO"]


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
