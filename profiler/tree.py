"""Aggregation: records and module facts in, a tree of layers out. Pure functions, no torch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from hooks import Counts, ModuleInfo, Record, Shape

__all__ = [
    "Layer",
    "FunctionStat",
    "Uncounted",
    "build_tree",
    "walk",
    "uncounted_summary",
    "layer_info",
    "sum_counts",
]


@dataclass(frozen=True, slots=True)
class FunctionStat:
    """The torch function calls one layer made itself, grouped by function."""

    function: str
    calls: int
    counts: Counts
    status: str
    bytes_read: int = 0
    bytes_written: int = 0
    roofline_time: float | None = None
    """Estimated seconds on a device (``result.roofline(device)``), else None."""
    bound: str = ""

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass(frozen=True, slots=True)
class Layer:
    """One module of the model with its own counts and its subtree's totals.

    ``own`` is what the module's rule counted, or the torch functions its forward called itself;
    ``total`` is ``own`` plus the children's totals. ``status`` is the status of its records
    (``"uncounted"`` if any call was); a module never called is a ``"container"`` when its
    children ran (a ``ModuleList``) and ``"not run"`` otherwise.
    """

    name: str
    type: str
    depth: int
    calls: int
    status: str
    rule: str | None
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    own: Counts
    total: Counts
    own_params: int
    params: int
    functions: tuple[FunctionStat, ...] = ()
    children: tuple[Layer, ...] = field(default=(), repr=False)
    uncounted_calls: int = 0
    """Calls in this layer's subtree (module calls and torch function calls) that had no rule."""
    time: float | None = None
    """Seconds in this layer's subtree (``measure_time=True``): own time plus the children's."""
    own_time: float | None = None
    """Seconds in this layer minus the time of its children's calls."""
    backward: Counts | None = None
    """A training profile's backward work in this layer's subtree (None in a forward profile)."""
    own_backward: Counts | None = None
    """The backward operators this layer's own forward made necessary, and its recomputed forward."""
    backward_functions: tuple[FunctionStat, ...] = ()
    backward_uncounted_calls: int = 0
    """Backward operators in this layer's subtree that had no rule."""
    backward_bytes: int | None = None
    """Bytes the backward's operators read and wrote in this layer's subtree (a training profile)."""
    own_backward_bytes: int | None = None
    activation_bytes: int | None = None
    """Bytes autograd saved for the backward in this layer's subtree (a training profile)."""
    own_activation_bytes: int | None = None
    bytes_read: int = 0
    """Bytes this layer's subtree read, call by call (unfused traffic: :mod:`hooks.traffic`)."""
    bytes_written: int = 0
    own_bytes_read: int = 0
    """Bytes this layer's own calls read: its rule's call, or the torch functions it called itself
    (copies such as ``torch.cat`` included, which count no FLOPs and have no row)."""
    own_bytes_written: int = 0
    roofline_time: float | None = None
    """Estimated seconds of this layer's subtree on a device (``result.roofline(device)``), else None."""
    own_roofline_time: float | None = None
    bound: str = ""
    """``"compute"`` or ``"memory"``: the roof this subtree's calls spend most of their estimated time against."""
    own_bound: str = ""
    """The same of this layer's own calls; ``""`` when they take no time."""

    @property
    def uncounted(self) -> bool:
        """True when some work in this layer's subtree ran without a rule."""
        return self.uncounted_calls > 0

    @property
    def bytes(self) -> int:
        """Bytes read and written in this layer's subtree."""
        return self.bytes_read + self.bytes_written

    @property
    def own_bytes(self) -> int:
        return self.own_bytes_read + self.own_bytes_written

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte moved in this layer's subtree (arithmetic intensity); None when it moved none."""
        return self.total.flops / self.bytes if self.bytes else None


@dataclass(frozen=True, slots=True)
class Uncounted:
    """A module type or torch function that ran without a rule: its work is unknown, not zero."""

    kind: str  # "module" or "function"
    name: str
    calls: int
    layers: tuple[str, ...]


def sum_counts(items: Iterable[Record | Counts]) -> Counts:
    """The sum of records' or counts' MACs and FLOPs (plain ints: this runs per record)."""
    macs = flops = matmul_flops = 0
    for item in items:
        macs += item.macs
        flops += item.flops
        matmul_flops += item.matmul_flops
    return Counts(macs, flops, matmul_flops)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _function_stats(by_function: Mapping[str, list[Record]]) -> tuple[FunctionStat, ...]:
    return tuple(
        FunctionStat(
            function,
            len(recs),
            sum_counts(recs),
            "uncounted" if any(r.status == "uncounted" for r in recs) else recs[0].status,
            sum(r.bytes_read for r in recs),
            sum(r.bytes_written for r in recs),
        )
        for function, recs in by_function.items()
    )


def _grouped(records: Iterable[Record]) -> tuple[dict[str, list[Record]], dict[str, dict[str, list[Record]]],
                                                   dict[str, list[int]]]:
    """Module calls by layer, torch function calls by layer and function, and the bytes of the
    free copies each layer made itself ``[read, written]`` (they count no FLOPs and have no row)."""
    by_module: dict[str, list[Record]] = defaultdict(list)
    by_function: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    copies: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        if record.function is None:
            by_module[record.name].append(record)
        elif record.status == "free":
            moved = copies[record.name]
            moved[0] += record.bytes_read
            moved[1] += record.bytes_written
        else:
            by_function[record.name][record.function].append(record)
    return by_module, by_function, copies


def build_tree(
    modules: Iterable[ModuleInfo],
    records: Iterable[Record],
    times: Mapping[str, float] | None = None,
    backward: Iterable[Record] | None = None,
    activations: Mapping[str, int] | None = None,
) -> Layer:
    """The layer tree: one node per module not covered by an ancestor's rule.

    ``times`` maps layer names to measured seconds inside them; a layer's own time is that minus
    its children's, so a container that never runs itself (a ``ModuleList``) shows its children's.
    ``backward`` (the backward's records) and ``activations`` (bytes saved for the backward, by
    layer) come from a training profile.
    """
    modules = list(modules)
    by_module, by_function, copies = _grouped(records)
    training = backward is not None
    backward_modules, backward_functions, backward_copies = _grouped(backward or ())
    activations = activations or {}

    subtree_params: dict[str, int] = defaultdict(int)
    for info in modules:
        name = info.name
        subtree_params[name] += info.params
        while name:
            name = _parent(name)
            subtree_params[name] += info.params

    children: dict[str, list[str]] = defaultdict(list)
    infos = {}
    for info in modules:
        if info.covered:
            continue
        infos[info.name] = info
        if info.name:
            children[_parent(info.name)].append(info.name)

    def build(name: str) -> Layer:
        info = infos[name]
        calls = by_module.get(name, [])
        functions = _function_stats(by_function.get(name, {}))
        own = sum_counts([*calls, *(f.counts for f in functions)])
        kids = tuple(build(child) for child in children.get(name, ()))
        copied_read, copied_written = copies.get(name, (0, 0))
        own_read = sum(r.bytes_read for r in calls) + sum(f.bytes_read for f in functions) + copied_read
        own_written = sum(r.bytes_written for r in calls) + sum(f.bytes_written for f in functions) + copied_written
        training_fields = {}
        if training:
            recomputed = backward_modules.get(name, [])
            bwd_functions = _function_stats(backward_functions.get(name, {}))
            own_backward = sum_counts([*recomputed, *(f.counts for f in bwd_functions)])
            own_bytes = activations.get(name, 0)
            own_backward_bytes = sum(r.bytes_read + r.bytes_written for r in recomputed) \
                + sum(f.bytes for f in bwd_functions) + sum(backward_copies.get(name, (0, 0)))
            training_fields = dict(
                own_backward=own_backward,
                backward=sum_counts([own_backward, *(k.backward for k in kids)]),
                backward_functions=bwd_functions,
                backward_uncounted_calls=sum(r.status == "uncounted" for r in recomputed)
                + sum(f.calls for f in bwd_functions if f.status == "uncounted")
                + sum(k.backward_uncounted_calls for k in kids),
                own_activation_bytes=own_bytes,
                activation_bytes=own_bytes + sum(k.activation_bytes for k in kids),
                own_backward_bytes=own_backward_bytes,
                backward_bytes=own_backward_bytes + sum(k.backward_bytes for k in kids),
            )
        own_time = time = None
        if times is not None:
            children_time = sum(k.time for k in kids)
            own_time = max(0.0, times.get(name, 0.0) - children_time)
            time = own_time + children_time
        statuses = {r.status for r in calls}
        if calls:
            status = "uncounted" if "uncounted" in statuses else calls[0].status
        else:
            status = "container" if any(k.status != "not run" for k in kids) else "not run"
        return Layer(
            name=name,
            type=info.type,
            depth=name.count(".") + 1 if name else 0,
            calls=len(calls),
            status=status,
            rule=info.rule or next((r.rule for r in calls if r.rule), None),  # a rule proven by the call
            input_shapes=calls[0].input_shapes if calls else (),
            output_shapes=calls[0].output_shapes if calls else (),
            own=own,
            total=sum_counts([own, *(k.total for k in kids)]),
            own_params=info.params,
            params=subtree_params[name],
            functions=functions,
            children=kids,
            uncounted_calls=sum(r.status == "uncounted" for r in calls)
            + sum(f.calls for f in functions if f.status == "uncounted")
            + sum(k.uncounted_calls for k in kids),
            time=time,
            own_time=own_time,
            **training_fields,
            bytes_read=own_read + sum(k.bytes_read for k in kids),
            bytes_written=own_written + sum(k.bytes_written for k in kids),
            own_bytes_read=own_read,
            own_bytes_written=own_written,
        )

    return build(modules[0].name)


def walk(layer: Layer) -> Iterator[Layer]:
    """The layers of a tree in pre-order (``named_modules()`` order)."""
    yield layer
    for child in layer.children:
        yield from walk(child)


def uncounted_summary(records: Iterable[Record]) -> tuple[Uncounted, ...]:
    """Every module type and torch function that ran without a rule, with its calls and layers."""
    calls: dict[tuple[str, str], int] = defaultdict(int)
    layers: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)
    for record in records:
        if record.status != "uncounted":
            continue
        key = ("module", record.type) if record.function is None else ("function", record.function)
        calls[key] += 1
        layers[key][record.name] = None
    return tuple(Uncounted(kind, name, calls[kind, name], tuple(layers[kind, name])) for kind, name in calls)


def layer_info(layer: Layer) -> dict[str, tuple[int, int, dict]]:
    """thop's ``ret_layer_info`` shape: ``{child: (macs, params, {grandchildren...})}``."""
    return {
        child.name.rpartition(".")[2]: (child.total.macs, child.params, layer_info(child))
        for child in layer.children
    }
