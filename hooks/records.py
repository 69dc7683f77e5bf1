"""One small immutable record per module call or torch function call seen during a capture."""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["Record", "Status", "Shape"]

Shape = tuple[int | None, ...]
"""A tensor's sizes; None for a nested tensor's ragged dimension, which has no one size."""

Status = Literal["counted", "free", "traced", "uncounted"]
"""How a call was counted.

- ``counted``: a rule gave its MACs and FLOPs.
- ``free``: a rule declared it free (0 by decision: ReLU, Dropout, views...).
- ``traced``: a module with no rule; its work is whatever the function rules counted inside it.
- ``uncounted``: no rule and nothing seen inside it; its work is unknown, not zero.
"""


class Record(NamedTuple):
    """One call: a module's forward (``function`` is None) or a torch function inside one.

    A NamedTuple rather than a frozen dataclass: one is made per call on the hot path, and a
    NamedTuple is as immutable at a quarter of the cost.
    """

    name: str
    type: str
    function: str | None
    status: Status
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    macs: int = 0
    flops: int = 0
    matmul_flops: int = 0
    rule: str | None = None
    bytes_read: int = 0
    """Bytes the call read: its input tensors and the parameters and buffers it holds (hooks.traffic)."""
    bytes_written: int = 0
    """Bytes of the call's outputs."""
