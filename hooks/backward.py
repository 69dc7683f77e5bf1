"""Capture of one training step: the forward, the tensors autograd saves for the backward, and the
backward itself, each attributed to a layer.

The forward is counted as :func:`hooks.capture.capture_forward` counts it, in training mode with
grad enabled. While it runs, a ``saved_tensors_hooks`` pack hook sees every tensor autograd keeps
for the backward: its storage, counted once, is an activation of the innermost running layer
(the model's parameters and buffers are not: they are in memory anyway), if it is still held
when the forward and the loss are done (a branch the forward discards frees what it saved).
``torch.utils.checkpoint`` keeps the arguments of the function it will recompute past that hook:
the keyword ones and tensors inside containers (non-reentrant: in its recompute closure and its
frame; reentrant: in its autograd node's context), and what the function itself keeps: a
``functools.partial``'s bound arguments (Hugging Face checkpoints ``partial(forward, layer,
**kwargs)``), a lambda's or nested function's closure, a bound method's object (see
:func:`tensors_in`); a selective checkpoint also caches the outputs its policy saves. Those are
activations of the layer that called ``checkpoint``, each storage once, while the checkpoint that
keeps them is still held; a reentrant checkpoint is looked for in the model's graph only, short of
the inputs' gradient edges.

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

import dataclasses
import threading
import types
import weakref
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import CheckpointFunction

from hooks.aten import AtenCounter, aten_rule, op_name
from hooks.capture import (
    _TRACED, Capture, CaptureError, RuleError, _capture_error, _is_floating, _layer, _module_infos, _not_dense,
    _copies, _new_record, _plan, _Recorder, attached, gc_paused,
)
from hooks.counts import checked
from hooks.records import Record
from hooks.traffic import call_traffic
from hooks.registry import Resolver

__all__ = ["LossError", "StepCapture", "capture_step", "tensors_in"]

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
    the stops (the inputs' gradient edges), as it does through a reentrant checkpoint, or from an
    input that requires grad where the caller's search did not find it."""
    trainable: tuple[bool, ...] | None = None
    """Each of ``parameters``' ``requires_grad`` during the step, after ``model.train()`` (which may
    unfreeze a backbone; they are restored after it); None: not recorded, take the current flags."""
    rolled_back: tuple[str, ...] = ()
    """Other threads' work the restore undid, one line each: ``"buffer 'bn.running_mean'"`` for
    a buffer of a layer another thread ran while the step held the model (its updates went to the
    step's working copy, which is dropped), or a buffer written through another reference while
    another thread ran the model (put back as before the step, whoever wrote it); ``"gradient of
    'fc.weight'"`` for a parameter whose ``.grad`` another thread's backward accumulated into
    meanwhile (the ``.grad`` is put back as before the step); ``"the random state"`` when another
    thread ran the model and the random state put back differed from the one found (its draws
    are undone with the step's)."""


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


_top_saved_tensors_hooks: Callable[[bool], tuple | None] = torch._C._autograd._top_saved_tensors_default_hooks


def _checkpoint_frame(pack: Callable) -> Any:
    """The ``_CheckpointFrame`` of a non-reentrant ``torch.utils.checkpoint`` region whose pack
    hook is ``pack``, or None for any other hook (checked on torch 2.14: the hook is marked
    ``_checkpoint_internal`` and closes over ``frame``)."""
    if not getattr(pack, "_checkpoint_internal", False):
        return None
    try:
        return pack.__closure__[pack.__code__.co_freevars.index("frame")].cell_contents
    except (AttributeError, ValueError, TypeError, IndexError):
        return None


def _checkpoint_arguments(frame: Any) -> tuple:
    """What a non-reentrant checkpoint keeps for its recomputation outside the saved-tensor hook:
    the positional arguments that are not tensors (a tensor went through the hook), the keyword
    arguments and the function, which its ``recompute_fn`` closes over, and the outputs a selective
    checkpoint (``context_fn=create_selective_checkpoint_contexts``) caches instead of recomputing,
    which bypass saved-tensor hooks: its recompute context's ``storage`` (torch 2.14)."""
    positional = [a for a in getattr(frame, "saved_args", ()) if not isinstance(a, torch._C._autograd.SavedTensor)]
    recompute = getattr(frame, "recompute_fn", None)
    names = getattr(getattr(recompute, "__code__", None), "co_freevars", ())
    cells = dict(zip(names, getattr(recompute, "__closure__", None) or ()))
    closed = [cells[name].cell_contents for name in ("kwargs", "fn") if name in cells]
    context = cells["recompute_context"].cell_contents if "recompute_context" in cells else None
    storage = getattr(context, "storage", None)  # op key -> its outputs, each wrapped (a _VersionWrapper's val)
    if isinstance(storage, Mapping):
        closed += [getattr(wrapped, "val", None) for outputs in storage.values() for wrapped in tree_leaves(outputs)]
    return positional, closed


# Objects the tensor search does not open: a module's parameters and buffers are the model's, not data
_OPAQUE = (str, bytes, bytearray, int, float, complex, nn.Module, type, types.ModuleType)


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``value``, in the order held, at any depth, each container once (cycles are
    safe): through tuples (named ones too), lists, sets, mappings (``defaultdict``, ``UserDict`` such
    as Hugging Face's ``BatchEncoding``, ``ModelOutput``), dataclasses (every field, those left out of
    ``__init__`` too), the types registered with ``torch.utils._pytree``, and what a callable keeps:
    a ``functools.partial``'s function and arguments, a function's closure cells and default
    arguments, a bound method's object and its attributes. Not into modules: their parameters and
    buffers are the model's, not data."""
    seen: set[int] = set()
    todo = [value]
    while todo:
        value = todo.pop()
        if isinstance(value, torch.Tensor):
            yield value
            continue
        if value is None or isinstance(value, _OPAQUE) or id(value) in seen:
            continue
        seen.add(id(value))
        todo.extend(reversed(_held(value)))


def _held(value: Any) -> list:
    """What ``value`` holds that may hold tensors (see :func:`tensors_in`); nothing for a leaf."""
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, (tuple, list, set, frozenset)):
        return list(value)
    if isinstance(value, partial):
        return [value.func, *value.args, *value.keywords.values()]
    if isinstance(value, types.FunctionType):  # a lambda or nested function: what it closes over
        cells = []
        for cell in value.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # a cell not yet assigned
                pass
        return [*cells, *(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]
    if isinstance(value, types.MethodType):  # a bound method: its function and its object's state
        owner = value.__self__
        opened = not isinstance(owner, _OPAQUE) and not dataclasses.is_dataclass(owner)
        return [value.__func__, owner, *(vars(owner).values() if opened and hasattr(owner, "__dict__") else ())]
    if isinstance(value, types.BuiltinMethodType):  # a tensor's method (h.mul): the tensor
        return [value.__self__] if isinstance(value.__self__, torch.Tensor) else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [getattr(value, field.name, None) for field in dataclasses.fields(value)]
    leaves = tree_leaves(value)
    return [] if len(leaves) == 1 and leaves[0] is value else leaves  # a registered container's leaves


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
        self.pack_hook = self.pack  # the object pushed, to tell it from hooks pushed above it
        self.hooks_seen: dict[int, weakref.ref] = {}  # pack hooks pushed above ours, looked at once
        # non-reentrant checkpoints the forward ran: (weak reference to the frame, the calling layer);
        # weak, as what a checkpoint keeps is an activation only while its graph holds it
        self.checkpoints: list[tuple[weakref.ref, str]] = []

    def _mark(self) -> None:
        if threading.get_ident() != self.thread:
            return
        top = self.stack[-1][0] if self.stack else None
        if top != self.owners[-1]:
            self.seqs.append(_next_sequence_nr())
            self.owners.append(top)

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.in_backward and threading.get_ident() == self.thread:
            self._note_checkpoint()  # before the frame goes on: the caller is the layer running checkpoint
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
        elif not self.in_backward and threading.get_ident() == self.thread:
            self._note_checkpoint()  # another thread's checkpoint is not the step's
        return super().__torch_function__(func, types, args, kwargs)

    def _note_checkpoint(self) -> None:
        """A checkpointed region runs when a pack hook sits above ours: a non-reentrant
        checkpoint's, whose frame keeps the arguments of the function it will recompute. Noted once
        per region, with the running layer (the first module call or torch call of the region is
        made by the layer that called ``checkpoint``)."""
        top = _top_saved_tensors_hooks(False)
        if top is None or top[0] is self.pack_hook:
            return
        pack = top[0]
        seen = self.hooks_seen.get(id(pack))
        if seen is not None and seen() is pack:
            return
        try:
            self.hooks_seen[id(pack)] = weakref.ref(pack)
        except TypeError:  # a callable that takes no weak reference: a user's hook, held for the call
            self.hooks_seen[id(pack)] = lambda: pack
        frame = _checkpoint_frame(pack)
        if frame is not None:
            self.checkpoints.append((weakref.ref(frame), self.stack[-1][0] if self.stack else self.root))

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

    def start_backward(self, loss: torch.Tensor, stops: set) -> None:
        """The forward and the loss are done: what they saved and still hold is the activations
        (tensors saved by work the forward discarded went with its graph), with what checkpoints
        still held keep for their recomputation. ``stops``: the nodes where the model's graph ends
        (the inputs' gradient edges)."""
        self.forward_records, self.records = self.records, []
        self.in_backward = True
        self.shapes = False
        for layer, kept in self._checkpointed(loss, stops):
            for tensor in tensors_in(kept):
                key, nbytes = _storage(tensor)
                entry = self.saved.get(key)
                if key not in self.excluded and (entry is None or (entry[2] is not None and entry[2].expired())):
                    self.saved[key] = (layer, nbytes, _weak(tensor))
        for name, nbytes, ref in self.saved.values():
            if ref is None or not ref.expired():
                self.activations[name] = self.activations.get(name, 0) + nbytes

    def _checkpointed(self, loss: torch.Tensor, stops: set) -> Iterator[tuple[str, Any]]:
        """What each checkpoint still held keeps past the pack hook, with the layer that called it:
        a non-reentrant one's frame while alive; a reentrant one's node in the loss's graph, short
        of ``stops`` (one upstream, in the graph that made an input, is not this model's)."""
        for ref, layer in self.checkpoints:
            frame = ref()
            if frame is not None:
                yield layer, _checkpoint_arguments(frame)
        for node in _nodes([loss.grad_fn], stops):
            if _reentrant_checkpoint(node):
                # ctx.inputs: the positional arguments, None where a tensor went to save_for_backward
                yield self._owner(node), (getattr(node, "inputs", None), getattr(node, "run_function", None))

    def forget(self) -> None:
        """Drop what the capture no longer needs and could keep alive: the frames (a layer's
        arguments) and the exception where the forward raised, whose traceback holds the forward's
        tensors. The graph's saved tensors hold the pack hook, and so this recorder, for as long as
        the graph lives: through an exception kept by the caller, its frames would hold the graph."""
        self.stack.clear()
        self.failure = None
        self.checkpoints.clear()
        self.hooks_seen.clear()

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


def _running(mode: Any) -> bool:
    """Whether ``mode`` is on this thread's dispatch stack (autograd's engine carries it to the
    threads that run a backward): a hook runs in the step's own backward, not another thread's."""
    return any(torch._C._get_dispatch_stack_at(i) is mode for i in range(torch._C._len_torch_dispatch_stack()))


class _RandomState:
    """The global random state (CPU, and CUDA where initialised), saved by the first of the training
    steps that overlap in time (profiles of different models on several threads) and put back by the
    last to end: each putting back what it found would leave the state of a draw another profile
    made meanwhile. Each step holds it by a token, weakly: a step that never gave it back (and is
    gone) stops no later restore, and a token given back twice counts once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders: weakref.WeakSet = weakref.WeakSet()
        self.saved: tuple[torch.Tensor, list[torch.Tensor] | None] | None = None

    def take(self, holder: object) -> None:
        with self.lock:
            if not self.holders:  # none, or only holders gone without giving it back: save afresh
                self.saved = _rng_state()
            self.holders.add(holder)

    def give_back(self, holder: object) -> bool:
        """Put the saved state back if ``holder`` is the last to hold it; whether that changed the
        random state (a draw since it was saved)."""
        with self.lock:
            if holder not in self.holders:
                return False
            self.holders.discard(holder)
            if self.holders or self.saved is None:
                return False
            (cpu, cuda), self.saved = self.saved, None
            now_cpu, now_cuda = _rng_state()
            changed = not torch.equal(cpu, now_cpu) or (
                cuda is not None and (now_cuda is None or any(not torch.equal(a, b) for a, b in zip(cuda, now_cuda))))
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            return changed


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


_random_state = _RandomState()


class _StepUndone:
    """The parameters' gradients, the buffers and the global random state as they were before the
    body (the random state: before the first of the training profiles overlapping it on other
    threads), also when it raises, without writing into a tensor another thread may hold.

    The body runs on working copies of the buffers put in the modules' place (BatchNorm's running
    statistics, an observer's statistics even when the forward resizes them), and the original
    objects go back after, unwritten, so a graph another thread saved them in stays valid. An
    original written meanwhile through another reference (a dict or a view the module keeps of its
    buffer: its version counter moved) gets its values back from a second copy taken before the
    body, one the body never sees: the working copy may have been written too. Gradients start as
    None, as after ``optimizer.zero_grad()``: the backward writes them instead of adding; the
    caller's ``.grad`` objects go back after. Hooks that run after a parameter's gradient is
    accumulated (an optimizer stepping in the backward) are held back in the step's own backward: a
    profile must not update the weights; another thread's backward meanwhile runs them. Every part
    of the restore runs even when another part raises. What the restore undid of another thread's
    work (the buffer updates of the layers it ran, a buffer written through another reference while
    it ran, the gradients it accumulated meanwhile, its random draws) is listed in ``rolled_back``."""

    def __init__(self, planned: list, params: list[nn.Parameter], recorder: _StepRecorder) -> None:
        self.params = params
        self.recorder = recorder
        self.rolled_back: list[str] = []
        self.names: dict[int, str] = {}  # parameter id -> its qualified name
        # (module, name, original, qualified name, the layer whose calls update it: its rule's owner)
        self.buffers: list[tuple[nn.Module, str, torch.Tensor, str, str]] = []
        ruler, seen = planned[0].name, set()
        for p in planned:
            if not p.covered:
                ruler = p.name
            if id(p.module) in seen:
                continue
            seen.add(id(p.module))
            prefix = f"{p.name}." if p.name else ""
            for name, parameter in p.module._parameters.items():
                if parameter is not None:
                    self.names.setdefault(id(parameter), prefix + name)
            for name, buffer in p.module._buffers.items():
                # a lazy module's uninitialized buffer is materialised in place, as its parameters are
                if buffer is not None and not isinstance(buffer, nn.parameter.UninitializedTensorMixin):
                    self.buffers.append((p.module, name, buffer, prefix + name, ruler))
        self.others: set[str] = set()  # parameters another thread's backward accumulated into meanwhile
        # on the dispatch stack while the loss runs (autograd's engine carries it into a backward
        # the loss runs), to tell that backward from another thread's
        self.loss_marker = AtenCounter(lambda *args: None)
        self.in_loss: set[str] = set()  # parameters whose gradient a backward run by the loss computed
        self.grads: list[torch.Tensor | None] = []
        self.trainable: tuple[bool, ...] | None = None
        # (module, name, original, the original's version, a copy of its values), one per buffer swapped
        self.swapped: list[tuple[nn.Module, str, torch.Tensor, int | None, torch.Tensor]] = []
        self.working: list[torch.Tensor | None] = []  # what each module held at the end: the working copy
        self.held: list[tuple[nn.Parameter, Any]] = []
        self.watched: list[tuple[nn.Parameter, Any, Any]] = []
        self.random_changed = False

    def __enter__(self) -> _StepUndone:
        try:
            _random_state.take(self)
            self.grads = [p.grad for p in self.params]
            self.trainable = tuple(p.requires_grad for p in self.params)
            copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # by original: (working copy, pristine)
            for module, name, original, _, _ in self.buffers:
                if id(original) not in copies:
                    # Two copies: the step may write both the working copy (through the module) and
                    # the original (through another reference), and the original's values must come back.
                    pristine = original.detach().clone()
                    copy = pristine.clone().requires_grad_(original.requires_grad)
                    copies[id(original)] = copy, pristine
                copy, pristine = copies[id(original)]
                module._buffers[name] = copy
                self.swapped.append((module, name, original, _version(original), pristine))
            self.recorder.excluded.update(_storage(copy)[0] for copy, _ in copies.values())
            for p in self.params:
                p.grad = None
                hooks = getattr(p, "_post_accumulate_grad_hooks", None)
                if hooks:  # a new dict is consulted from then on; putting the old one back restores it
                    p._post_accumulate_grad_hooks = OrderedDict(held=self._held_back(hooks))
                    self.held.append((p, hooks))
                if p.requires_grad and not isinstance(p, nn.parameter.UninitializedTensorMixin):
                    self.watched.append((p, p._backward_hooks, p.register_hook(self._watch(self.names.get(id(p), "?")))))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def noted(self, error: BaseException) -> BaseException:
        """``error``, with a note naming what the restore rolled back of another thread's work (the
        warning ``profile_training`` gives for that is not reached when the step raises)."""
        if self.rolled_back:
            note = ("another thread used the model meanwhile; restoring the model as it was before the profile "
                    f"rolled back that thread's work on {', '.join(self.rolled_back)}")
            if hasattr(error, "add_note"):
                error.add_note(note)
            else:  # Python 3.10: kept where 3.11 keeps it, not shown
                error.__notes__ = [*getattr(error, "__notes__", ()), note]
        return error

    def _held_back(self, hooks: Mapping) -> Callable[[torch.Tensor], None]:
        counter = self.recorder.backward_counter

        def run(parameter: torch.Tensor) -> None:
            if not _running(counter):
                for hook in tuple(hooks.values()):
                    hook(parameter)
        return run

    def _watch(self, name: str) -> Callable[[torch.Tensor], None]:
        counter, marker, others, in_loss = self.recorder.backward_counter, self.loss_marker, self.others, self.in_loss

        def watch(grad: torch.Tensor) -> None:
            if _running(marker):
                in_loss.add(name)
            elif not _running(counter):
                others.add(name)
        return watch

    @contextmanager
    def loss_running(self) -> Iterator[None]:
        """Run the loss; one that ran a backward itself (``loss.backward()`` inside it: the step's
        backward would count nothing of it, or find the graph freed) raises :class:`LossError`.
        A gradient it only computes (``torch.autograd.grad``, a gradient penalty) is fine."""
        with self.loss_marker:
            yield
        accumulated = [name for p in self.params if p.grad is not None
                       and (name := self.names.get(id(p), "?")) in self.in_loss]
        if accumulated:
            raise LossError(f"the loss ran a backward itself (it accumulated the gradient of {accumulated[0]!r}"
                            + (f" and {len(accumulated) - 1} more" if len(accumulated) > 1 else "")
                            + "): return the loss without calling .backward() on it; profile_training runs and "
                            "counts the backward")

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        # Every restore runs even when one before it raises (a KeyboardInterrupt, a hook's error);
        # the random state goes back last: a hold never given back would stop every later restore.
        with ExitStack() as restores:
            restores.callback(self._give_back_random_state)
            restores.callback(self._put_buffers_back)
            restores.callback(self._put_hooks_back)
            restores.callback(self._put_grads_back)
            restores.callback(self._unwatch)
        self.rolled_back = self._rolled_back()

    def _unwatch(self) -> None:
        for p, hooks, handle in self.watched:
            handle.remove()
            if hooks is None and not p._backward_hooks:  # as it was, unless a hook came meanwhile
                p._backward_hooks = None

    def _put_grads_back(self) -> None:
        for p, grad in zip(self.params, self.grads):
            p.grad = grad

    def _put_hooks_back(self) -> None:
        for p, hooks in self.held:
            p._post_accumulate_grad_hooks = hooks

    def _put_buffers_back(self) -> None:
        self.working = [module._buffers.get(name) for module, name, *_ in self.swapped]
        for module, name, original, version, pristine in self.swapped:
            module._buffers[name] = original
            if _version(original) != version:  # written through another reference
                with torch.no_grad():
                    if original.shape == pristine.shape and original.dtype == pristine.dtype:
                        original.copy_(pristine)
                    else:
                        original.set_(pristine)

    def _give_back_random_state(self) -> None:
        self.random_changed = _random_state.give_back(self)

    def _rolled_back(self) -> list[str]:
        """What the restore undid of other threads' work (see :attr:`StepCapture.rolled_back`)."""
        ran = set(self.recorder.other_threads)
        if not ran:
            return sorted(f"gradient of {name!r}" for name in self.others)
        names = {id(original): qualified for _, _, original, qualified, _ in self.buffers}
        layers = {(id(module), name): layer for module, name, _, _, layer in self.buffers}
        undone: dict[str, None] = {}
        for (module, name, original, version, _), working in zip(self.swapped, self.working):
            if layers[id(module), name] in ran and _changed(working, original):
                undone[f"buffer {names[id(original)]!r}"] = None  # its updates went to the dropped copy
            elif _version(original) != version:  # put back, whoever wrote it
                undone[f"buffer {names[id(original)]!r}"] = None
        return [*undone, *(f"gradient of {name!r}" for name in sorted(self.others))] + (
            ["the random state"] if self.random_changed else [])


def _version(tensor: torch.Tensor) -> int | None:
    """``tensor``'s version counter (it moves with each in-place write), None where it has none."""
    try:
        return tensor._version
    except (RuntimeError, AttributeError):  # an inference tensor: nothing outside inference mode writes it
        return None


def _changed(current: torch.Tensor | None, original: torch.Tensor) -> bool:
    """Whether the working copy ``current`` of a buffer no longer equals ``original`` (True where
    that cannot be told)."""
    if current is None or current.shape != original.shape or current.dtype != original.dtype:
        return True
    try:
        return not torch.equal(current, original)
    except Exception:  # meta tensors have no values to compare; whatever fails, say it may have changed
        return True


def capture_step(model: nn.Module, call: Callable[[], Any], loss_fn: Callable[[Any], torch.Tensor],
                 resolver: Resolver, stop_at: Sequence[torch.autograd.graph.GradientEdge] = ()) -> StepCapture:
    """Run ``call()`` (one forward of ``model``) in training mode with grad enabled, ``loss_fn`` on
    its output, and the backward of that loss, all counted; the model comes back as it was
    (training flags, gradients, buffers, the random state), also when any of them raises.
    The backward does not go past the nodes of ``stop_at`` (the gradient edges of the model's
    inputs, taken before ``call()``): the graph that made the inputs is not run.

    A loss that is not a scalar requiring grad, or that runs a backward itself, raises :class:`LossError`. An error in the forward
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
        undone = _StepUndone(planned, params, recorder)
        stage = "setup"  # attached() refuses a busy model before anything runs
        try:
            try:
                with attached(model, recorder.pre_hook, recorder.post_hook, always_call=True, modules=modules,
                              training=True), undone, recorder:
                    stage = "forward"
                    with torch.autograd.graph.saved_tensors_hooks(recorder.pack_hook, _unpacked):
                        output = call()
                        stage = "loss"
                        with recorder.loss_in_model(model), undone.loss_running():
                            loss = loss_fn(output)
                        _check_loss(loss)
                    stage = "backward"
                    stops = {edge.node for edge in stop_at}
                    recorder.start_backward(loss, stops)
                    torch._C._push_on_torch_dispatch_stack(recorder.backward_counter)
                    try:
                        _run_backward(loss, stop_at)
                    finally:
                        torch._C._pop_torch_dispatch_stack(None)
            finally:
                recorder.close()
        except (RuleError, LossError) as exc:
            raise undone.noted(exc)
        except Exception as exc:
            if stage == "setup":
                raise
            if stage == "forward":
                error = _capture_error(recorder, exc)
            elif stage == "loss":
                error = CaptureError(f"the loss raised {type(exc).__name__}: {exc}")
            else:
                error = CaptureError(f"the backward raised {type(exc).__name__} after the backward of "
                                     f"{_layer(recorder.last_layer)} ran (the last layer whose backward was counted): "
                                     f"{exc}")
            raise undone.noted(error) from exc
        except BaseException as exc:  # KeyboardInterrupt
            raise undone.noted(exc)
        finally:
            recorder.forget()
        if recorder.rule_error is not None:
            raise recorder.rule_error
        forward = Capture(_module_infos(planned), tuple(recorder.forward_records), tuple(recorder.other_threads),
                          tuple(notes), recorder.ran_nothing)
        return StepCapture(forward, tuple(recorder.records), recorder.activations, tuple(params), tuple(buffers),
                           recorder.outside, undone.trainable, tuple(undone.rolled_back))


def _run_backward(loss: torch.Tensor, stop_at: Sequence[torch.autograd.graph.GradientEdge] = ()) -> None:
    """``loss.backward()``, straight into autograd's engine, not past ``stop_at``. ``Tensor.backward``
    would go through the function mode, which steps off the stack while a call it sees runs: a
    forward recomputed in the backward (``torch.utils.checkpoint``) would run unseen."""
    with torch._C.DisableTorchFunction():
        seed = torch.ones_like(loss, memory_format=torch.preserve_format)
    engine = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if engine is None:  # torch < 2.3
        engine = torch.autograd.Variable._execution_engine.run_backward
    stops = {edge.node for edge in stop_at}
    short = list(_nodes([torch.autograd.graph.get_gradient_edge(loss).node], stops)) if stops else []
    if short and not any(_reentrant_checkpoint(node) for node in short):
        # The gradients of the leaves and of the stops are computed and dropped, not accumulated:
        # the engine runs no node of the graph past the stops, not even their own (whose saved
        # tensors an earlier backward may have freed), and no leaf's gradient accumulation.
        inputs = [*stop_at, *(torch.autograd.graph.GradientEdge(node, 0) for node in short if _is_leaf(node))]
        engine((loss,), (seed,), False, False, tuple(inputs), allow_unreachable=True, accumulate_grad=False)
        return
    # A plain backward: a reentrant checkpoint refuses one given inputs, so it goes on past the stops
    # (operators not counted, and reported); the leaves it reaches there get their .grad back.
    leaves = [node.variable for node in _nodes(list(stops), set()) if _is_leaf(node)]
    grads = [leaf.grad for leaf in leaves]
    try:
        engine((loss,), (seed,), False, False, (), allow_unreachable=True, accumulate_grad=True)
    finally:
        for leaf, grad in zip(leaves, grads):
            leaf.grad = grad


def _reentrant_checkpoint(node: Any) -> bool:
    """Whether ``node`` is the autograd node of a ``torch.utils.checkpoint(use_reentrant=True)``."""
    return getattr(node, "_forward_cls", None) is CheckpointFunction


def _is_leaf(node: Any) -> bool:
    return hasattr(node, "variable")  # AccumulateGrad: a leaf's gradient


def _nodes(starts: list, stops: set) -> Iterator[Any]:
    """The autograd nodes reachable from ``starts`` without passing one of ``stops``, each once."""
    seen, todo = set(starts), [node for node in starts if node is not None]
    while todo:
        node = todo.pop()
        if node in stops:
            continue
        yield node
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                seen.add(child)
                todo.append(child)


def _check_loss(loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise LossError(f"the loss must be a tensor, not {type(loss).__name__}")
    if loss.numel() != 1:
        raise LossError(f"the loss must be a scalar (one element), not a tensor of shape {list(loss.shape)}; "
                        "reduce it, e.g. loss=lambda out: out.sum()")
    if not loss.requires_grad:
        raise LossError("the loss does not require grad: every parameter is frozen (requires_grad=False) and no "
                        "input requires grad, or the loss was computed without grad; there is no backward to count")
    if loss.grad_fn is None:
        raise LossError("the loss is a leaf tensor (no operation made it), so it depends on nothing the model "
                        "computed and its backward runs nothing; compute it from the model's output")


def _unpacked(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
