"""The built-in rules, one module per family; importing this package registers them all."""

from hooks.rules import activation, attention, backward, conv, elementwise, linear, loss, matmul, norm, pooling, rnn, structural  # noqa: F401

__all__: list[str] = []
