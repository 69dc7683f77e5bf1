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

from dataclasses import dataclass

__all__ = ["Counts", "ZERO"]


@dataclass(frozen=True, slots=True)
class Counts:
    """MACs and FLOPs of one call."""

    macs: int = 0
    flops: int = 0
    matmul_flops: int = 0

    @classmethod
    def matmul(cls, macs: int) -> Counts:
        """Matmul-like work: each MAC is one multiply and one add."""
        return cls(macs=macs, flops=2 * macs, matmul_flops=2 * macs)

    @classmethod
    def elementwise(cls, flops: int, macs: int = 0) -> Counts:
        """Elementwise work; ``macs`` is thop's number for module types thop counts."""
        return cls(macs=macs, flops=flops)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.macs + other.macs,
            self.flops + other.flops,
            self.matmul_flops + other.matmul_flops,
        )


ZERO = Counts()
