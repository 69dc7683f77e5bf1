"""Per-module wall time: pre/post hooks around every module call, for a few forward passes.

Kept apart from the capture so counting stays one pass and timings carry no counting overhead.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hooks.capture import attached, gc_paused

__all__ = ["time_modules"]


def time_modules(
    model: nn.Module,
    call: Callable[[], Any],
    names: Iterable[tuple[nn.Module, str]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    synchronize: bool = False,
) -> dict[str, float]:
    """Seconds spent inside each named module (all its calls) in the median of ``repeats`` runs.

    The run whose total is the median is reported whole, so a parent's time always covers its
    children's. ``synchronize`` waits for CUDA before each reading.
    """
    names = dict(names)
    sync = torch.cuda.synchronize if synchronize else None
    starts: list[float] = []
    spent: dict[str, float] = defaultdict(float)

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if module in names:
            if sync:
                sync()
            starts.append(time.perf_counter())

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        name = names.get(module)
        if name is not None:
            if sync:
                sync()
            spent[name] += time.perf_counter() - starts.pop()

    runs = []
    with gc_paused():
        with attached(model):
            for _ in range(warmup):
                call()
        with attached(model, pre_hook, post_hook, with_kwargs=False):
            for _ in range(repeats):
                spent.clear()
                starts.clear()
                call()
                runs.append(dict(spent))
    runs.sort(key=lambda run: run.get("", 0.0))  # the whole model's time
    return runs[len(runs) // 2]
