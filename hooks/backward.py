"""Capture of one training step: the forward, the tensors autograd saves for the backward, and the
backward itself, each attributed to a layer.

The forward is counted as :func:`hooks.capture.capture_forward` counts it, in training mode with
grad enabled. While it runs, a ``saved_tensors_hooks`` pack hook sees every tensor autograd keeps
for the backward: its storage, counted once, is an activation of the innermost running layer
(the model's parameters and buffers are not: they are in memory anyway), if it is still held
when the forward and the loss are done (a branch the forward discards frees what it saved).

The backward runs in autograd's engine, where no module hook fires. Every autograd node gets a
sequence number when the forward creates it, in increasing order, so the module hooks note the
sequence number each time the innermost running layer changes; the node running an operator in the
backward (``torch._C._current_autograd_node()``) then names its layer by a binary search. A
parameter's gradient accumulation belongs to the layer owning the parameter. The backward's aten
operators are counted by :func:`hooks.aten.aten_rule`, the aten-level rules (FlopCounterMode's
formulas for matmul-like work). A forward recomputed during the backward
(``torch.utils.checkpoint``) runs its Python again: the hooks and the function mode count it as a
forward, into the backward's records.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

from hooks.aten import AtenCounter, aten_rule, op_name
from hooks.capture import (
    _TRACED, Capture, CaptureError, RuleError, _capture_error, _is_floating, _layer, _module_infos, _not_dense,
    _copies, _new_record, _plan, _Recorder, attached, gc_paused,
)
from hooks.counts import checked
from hooks.records import Record
from hooks.traffic import call_traffic
from hooks.registry import Resolver

__all__ = ["LossError", "StepCapture", "capture_step"]

_ACCUMULATE = 2**64 - 1  # the sequence number of an AccumulateGrad node (a parameter's gradient)
_OUTSIDE = "<outside the model>"  # the owner of nodes the forward did not create
_next_sequence_nr: Callable[[], int] = getattr(torch.autograd, "_get_sequence_nr", None) or getattr(
    torch._C._autograd, "_get_sequence_nr", None)


class LossError(ValueError):
    """The loss is not something a backward can start from: not a scalar, or it needs no grad."""


@dataclass(frozen=True, slots=True)
class StepCapture:
    """What one training step left behind: the forward's capture, the backward's records (the
    operators it ran, by layer, and any forward it recomputed), each layer's activation bytes, and
    the model's parameters and buffers."""

    forward: Capture
    backward: tuple[Record, ...]
    activations: dict[str, int]
    parameters: tuple[torch.Tensor, ...]  # the model's, each once
    buffers: tuple[torch.Tensor, ...]
    outside: int = 0
    """Backward operators of the graph that made an input (not counted): the backward went past
    the model's inputs, which ``profile_training`` makes leaves only where it can reach them."""


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    """A key for the memory ``tensor`` keeps alive, and its size in bytes: its storage (views share
    one), or the tensor itself for a layout that has no single storage (sparse, nested)."""
    if isinstance(tensor, nn.parameter.UninitializedTensorMixin):  # a lazy module's, before its first forward
        return id(tensor), 0
    try:
        storage = tensor.untyped_storage()
        return storage._cdata, storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return id(tensor), tensor.numel() * tensor.element_size()


def _weak(tensor: torch.Tensor) -> StorageWeakRef | None:
    """A weak reference to ``tensor``'s storage, to tell later whether it was freed."""
    try:
        return StorageWeakRef(tensor.untyped_storage())
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class _StepRecorder(_Recorder):
    """The forward's recorder, plus the layer changes by sequence number, the activations, and
    the backward's operators."""

    def __init__(self, function_rules: dict, planned: list, tensors: list[torch.Tensor]) -> None:
        super().__init__(function_rules, planned)
        self.root = planned[0].name
        self.seqs = [-1]  # sequence numbers at which the innermost running layer changed...
        self.owners: list[str | None] = [_OUTSIDE]  # ...and the layer from then on (None: none ran)
        self.outside = 0  # backward operators of nodes created before the forward: not the model's
        self.param_owner: dict[int, str] = {}
        ruler = self.root
        for p in planned:
            if not p.covered:
                ruler = p.name  # a covered module's parameters belong to the ancestor whose rule covers it
            for parameter in p.module._parameters.values():
                if parameter is not None:
                    self.param_owner.setdefault(id(parameter), ruler)
        self.excluded = {_storage(t)[0] for t in tensors}  # the parameters and buffers: not activations
        self.saved: dict[int, tuple] = {}  # storage key -> (layer, bytes, weak reference to the storage)
        # lazy modules create their parameters in the forward: their storages are read again then
        self.lazy = [p.module for p in planned if isinstance(p.module, nn.modules.lazy.LazyModuleMixin)]
        self.activations: dict[str, int] = {}
        self.forward_records: list[Record] = []
        self.in_backward = False
        self.backward_counter = AtenCounter(self._count_backward)
        self.last_layer = self.root  # the layer whose backward ran last, for errors

    def _mark(self) -> None:
        if threading.get_ident() != self.thread:
            return
        top = self.stack[-1][0] if self.stack else None
        if top != self.owners[-1]:
            self.seqs.append(_next_sequence_nr())
            self.owners.append(top)

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        super().pre_hook(module, args)
        self._mark()

    def post_hook(self, *args: Any) -> None:
        super().post_hook(*args)
        self._mark()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.in_backward and not self.stack and threading.get_ident() == self.thread:
            # Python running in the backward, outside any layer: a checkpoint recomputing a
            # function that calls no hooked layer. The nodes it creates (whose backward the
            # checkpoint runs next) belong to the layer whose backward is running.
            layer = self._owner(torch._C._current_autograd_node())
            if layer != self.owners[-1]:
                self.seqs.append(_next_sequence_nr())
                self.owners.append(layer)
        return super().__torch_function__(func, types, args, kwargs)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor autograd saves for the backward: an activation of the innermost layer, once per storage."""
        if not self.in_backward and threading.get_ident() == self.thread:
            key, nbytes = _storage(tensor)
            if key not in self.excluded and self.lazy:
                self.excluded.update(_storage(t)[0] for m in self.lazy
                                     for t in (*m._parameters.values(), *m._buffers.values()) if t is not None)
            if key in self.excluded:
                return tensor
            entry = self.saved.get(key)
            if entry is None or (entry[2] is not None and entry[2].expired()):  # new, or a freed one's address
                name = self.stack[-1][0] if self.stack else self.root
                self.saved[key] = (name, nbytes, _weak(tensor))
        # an alias, not the tensor: an output its own node saves would otherwise hold that node in a
        # cycle no collector frees (a graph the forward discards would stay in memory); autograd
        # restores the history on unpacking, so higher-order gradients are unchanged
        return tensor.detach()

    @contextmanager
    def loss_in_model(self, model: nn.Module) -> Iterator[None]:
        """The loss is computed in the model's own row: its torch calls are counted there."""
        self.stack.append([self.root, 0, model, (), _TRACED, len(self.records)])
        self._mark()
        try:
            yield
        finally:
            self.stack.pop()
            self._mark()

    def start_backward(self) -> None:
        """The forward and the loss are done: what they saved and still hold is the activations
        (tensors saved by work the forward discarded went with its graph)."""
        self.forward_records, self.records = self.records, []
        self.in_backward = True
        self.shapes = False
        for name, nbytes, ref in self.saved.values():
            if ref is None or not ref.expired():
                self.activations[name] = self.activations.get(name, 0) + nbytes

    def _owner(self, node: Any) -> str:
        if node is None:
            return self.root
        seq = node._sequence_nr()
        if seq == _ACCUMULATE:
            return self.param_owner.get(id(getattr(node, "variable", None)), _OUTSIDE)
        return self.owners[bisect_right(self.seqs, seq) - 1] or self.root

    def _count_backward(self, op: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """An operator of the backward: a layer's forward recomputed (checkpointing) is counted by
        the hooks and the function mode as it runs; anything else by the node running it."""
        if self.stack:
            return
        try:
            rule = self.aten_rules[op]
        except KeyError:
            rule = self.aten_rules[op] = aten_rule(op, self.function_rules)
        free = rule is not None and rule.free
        if free and not (isinstance(out, torch.Tensor) and _copies(op, args, kwargs, out)):
            return  # most of a backward: views, transposes, detaches
        layer = self._owner(torch._C._current_autograd_node())
        if layer is _OUTSIDE:
            self.outside += not free
            return
        self.last_layer = layer
        with torch._C.DisableTorchFunction():  # rules' shape reads are not the model's calls
            name = self.names.get(op) or self.names.setdefault(op, op_name(op))
            if free:  # a copy (ReLU's threshold_backward, a gradient's sum into a view): its bytes
                self._free_call([layer, 0], name, op, args, kwargs, out)
                return
            if not _is_floating(out):
                return
            if rule is None or kwargs or _not_dense(args) or torch._C._functorch.peek_interpreter_stack() is not None:
                self._count_call([layer, 0], name, op, rule, args, kwargs, out)
                return
            try:  # the common case of _count_call, on the path every backward operator takes
                counts = checked(rule.fn(args, kwargs, out))
            except Exception as exc:
                raise self._rule_error(f"rule {rule.name} failed on {name} in the backward of {_layer(layer)}: {exc}") from exc
            self.records.append(_new_record((layer, name, name, "counted", (), (), *counts, rule.name,
                                             *call_traffic(args, kwargs, out))))


def _tensors(modules: list[nn.Module], kind: str) -> list[torch.Tensor]:
    """Every parameter (``kind="_parameters"``) or buffer of ``modules``, each once."""
    return list({id(t): t for m in modules for t in getattr(m, kind).values() if t is not None}.values())


@contextmanager
def _step_undone(modules: list[nn.Module], params: list[nn.Parameter]) -> Iterator[None]:
    """The parameters' gradients, the buffers (BatchNorm's running statistics, an observer's
    statistics even when the forward resized them) and the global random state as they were
    before the body, also when it raises. Gradients start as None in the body, as after
    ``optimizer.zero_grad()``: the backward writes them instead of adding. Hooks that run after a
    parameter's gradient is accumulated (an optimizer stepping in the backward) are held back: a
    profile must not update the weights."""
    grads = [p.grad for p in params]
    held_hooks = [(p, p._post_accumulate_grad_hooks) for p in params if getattr(p, "_post_accumulate_grad_hooks", None)]
    buffers = [(module, name, buffer, buffer.detach().clone())
               for module in modules for name, buffer in module._buffers.items() if buffer is not None]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        for p in params:
            p.grad = None
        for p, _ in held_hooks:
            p._post_accumulate_grad_hooks = OrderedDict()  # consulted at each call: an empty one runs none
        yield
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        for p, grad in zip(params, grads):
            p.grad = grad
        for p, hooks in held_hooks:
            p._post_accumulate_grad_hooks = hooks
        with torch.no_grad():
            for module, name, buffer, saved in buffers:
                module._buffers[name] = buffer
                if buffer.shape != saved.shape:
                    buffer.resize_(saved.shape)
                buffer.copy_(saved)


def capture_step(model: nn.Module, call: Callable[[], Any], loss_fn: Callable[[Any], torch.Tensor],
                 resolver: Resolver, stop_at: Sequence[torch.autograd.graph.GradientEdge] = ()) -> StepCapture:
    """Run ``call()`` (one forward of ``model``) in training mode with grad enabled, ``loss_fn`` on
    its output, and the backward of that loss, all counted; the model comes back as it was
    (training flags, gradients, buffers, the random state), also when any of them raises.
    The backward does not go past the nodes of ``stop_at`` (the gradient edges of the model's
    inputs, taken before ``call()``): the graph that made the inputs is not run.

    A loss that is not a scalar requiring grad raises :class:`LossError`. An error in the forward
    is a :class:`CaptureError` naming the layer, as in :func:`hooks.capture.capture_forward`; in
    the loss or the backward, one saying so. A model another profile holds is refused as
    ``attached`` refuses it, before anything runs.
    """
    if _next_sequence_nr is None:
        raise RuntimeError(f"profile_training needs torch.autograd._get_sequence_nr, which torch "
                           f"{torch.__version__} lacks; upgrade torch")
    with gc_paused():
        notes: list[str] = []
        planned = _plan(model, resolver, notes)
        modules = list({id(p.module): p.module for p in planned}.values())
        params, buffers = _tensors(modules, "_parameters"), _tensors(modules, "_buffers")
        recorder = _StepRecorder(resolver.function_rules, planned, [*params, *buffers])
        stage = "setup"  # attached() refuses a busy model before anything runs
        try:
            try:
                with attached(model, recorder.pre_hook, recorder.post_hook, always_call=True, modules=modules,
                              training=True), _step_undone(modules, params), recorder:
                    stage = "forward"
                    with torch.autograd.graph.saved_tensors_hooks(recorder.pack, _unpacked):
                        output = call()
                        stage = "loss"
                        with recorder.loss_in_model(model):
                            loss = loss_fn(output)
                        _check_loss(loss)
                    stage = "backward"
                    recorder.start_backward()
                    torch._C._push_on_torch_dispatch_stack(recorder.backward_counter)
                    try:
                        _run_backward(loss, stop_at)
                    finally:
                        torch._C._pop_torch_dispatch_stack(None)
            finally:
                recorder.close()
        except (RuleError, LossError):
            raise
        except Exception as exc:
            if stage == "setup":
                raise
            if stage == "forward":
                raise _capture_error(recorder, exc) from exc
            if stage == "loss":
                raise CaptureError(f"the loss raised {type(exc).__name__}: {exc}") from exc
            raise CaptureError(f"the backward raised {type(exc).__name__} after the backward of "
                               f"{_layer(recorder.last_layer)} ran (the last layer whose backward was counted): "
                               f"{exc}") from exc
        if recorder.rule_error is not None:
            raise recorder.rule_error
        forward = Capture(_module_infos(planned), tuple(recorder.forward_records), tuple(recorder.other_threads),
                          tuple(notes), recorder.ran_nothing)
        return StepCapture(forward, tuple(recorder.records), recorder.activations, tuple(params), tuple(buffers),
                           recorder.outside)


def _run_backward(loss: torch.Tensor, stop_at: Sequence[torch.autograd.graph.GradientEdge] = ()) -> None:
    """``loss.backward()``, straight into autograd's engine, not past ``stop_at``. ``Tensor.backward``
    would go through the function mode, which steps off the stack while a call it sees runs: a
    forward recomputed in the backward (``torch.utils.checkpoint``) would run unseen."""
    with torch._C.DisableTorchFunction():
        seed = torch.ones_like(loss, memory_format=torch.preserve_format)
    engine = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if engine is None:  # torch < 2.3
        engine = torch.autograd.Variable._execution_engine.run_backward
    if not stop_at:
        engine((loss,), (seed,), False, False, (), allow_unreachable=True, accumulate_grad=True)
        return
    # The gradients of the leaves and of the stops are computed and dropped, not accumulated: the
    # engine runs no node of the graph past the stops, not even their own (whose saved tensors an
    # earlier backward may have freed), and no leaf's gradient accumulation.
    engine((loss,), (seed,), False, False, _inputs_short_of(loss, stop_at), allow_unreachable=True,
           accumulate_grad=False)


def _inputs_short_of(loss: torch.Tensor, stop_at: Sequence[torch.autograd.graph.GradientEdge]) -> tuple:
    """The engine's ``inputs`` for a backward of ``loss`` that stops at ``stop_at``: those edges,
    and the edge of every leaf reached without passing one of them (a gradient the plain backward
    would accumulate)."""
    stops = {edge.node for edge in stop_at}
    inputs = list(stop_at)
    first = torch.autograd.graph.get_gradient_edge(loss).node
    seen, todo = {first}, [first]
    while todo:
        node = todo.pop()
        if node in stops:
            continue
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf's gradient
            inputs.append(torch.autograd.graph.GradientEdge(node, 0))
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                todo.append(child)
    return tuple(inputs)


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise LossError(f"the loss must be a tensor, not {type(loss).__name__}")
    if loss.numel() != 1:
        raise LossError(f"the loss must be a scalar (one element), not a tensor of shape {list(loss.shape)}; "
                        "reduce it, e.g. loss=lambda out: out.sum()")
    if not loss.requires_grad:
        raise LossError("the loss does not require grad: every parameter is frozen (requires_grad=False) and no "
                        "input requires grad, or the loss was computed without grad; there is no backward to count")


def _unpacked(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
