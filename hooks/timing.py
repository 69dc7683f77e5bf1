"""Per-module wall time: pre/post hooks around every module call, for a few forward passes.

Kept apart from the capture so counting stays one pass and timings carry no counting overhead.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hooks.capture import _RAISED, attached, forward_error, gc_paused

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
    children's. ``synchronize`` waits for CUDA before each reading. A forward that raises in one
    of these passes is re-raised as :class:`CaptureError` naming the layer that was running.
    """
    names = dict(names)
    sync = torch.cuda.synchronize if synchronize else None
    running: list[tuple[str, None, nn.Module, tuple, float]] = []  # name, -, module, args, start
    failed: list[tuple] = []  # (layer, exception) for each exception a layer raised in this pass
    spent: dict[str, float] = defaultdict(float)

    def pre_hook(module: nn.Module, args: tuple) -> None:
        name = names.get(module)
        if name is not None:
            if sync:
                sync()
            running.append((name, None, module, args, time.perf_counter()))

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any = _RAISED) -> None:
        name = names.get(module)
        if name is None or not running:
            return
        frame = running.pop()
        if output is _RAISED:  # always_call: the module raised; the first module it leaves is where
            exc = sys.exc_info()[1]
            if not failed or failed[-1][1] is not exc:
                failed.append((frame[:4], exc))
            return
        if sync:
            sync()
        spent[name] += time.perf_counter() - frame[4]

    runs = []
    with gc_paused(), attached(model, pre_hook, post_hook, always_call=True):
        for run in range(warmup + repeats):
            spent.clear()
            running.clear()
            failed.clear()
            try:
                call()
            except Exception as exc:
                pass_name = f"warm-up pass {run + 1}" if run < warmup else f"timed pass {run - warmup + 1}"
                where = failed[-1][0] if failed and failed[-1][1] is exc else None  # not an error a layer caught
                raise forward_error(exc, where, f" in the {pass_name} of measure_time=True") from exc
            if run >= warmup:
                runs.append(dict(spent))
    runs.sort(key=lambda run: run.get("", 0.0))  # the whole model's time
    return runs[len(runs) // 2]
