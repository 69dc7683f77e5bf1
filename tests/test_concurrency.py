"""Two threads profiling one model at once leave every training flag as it was; another thread's
forwards meanwhile are named in the warning, which says they ran in eval mode. Another thread
training the model during profile_training: what the restore rolled back of its work is named
exactly, and its autograd graph stays valid."""

from __future__ import annotations

import contextlib
import threading
import warnings

import pytest
import torch
from torch import nn

from profiler import CaptureError, UncountedWarning, profile, profile_training

from conftest import assert_unchanged, snapshot


class Choreographed(nn.Module):
    """Its forward runs the current thread's step (if any) first, so tests can order two profiles."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(4)
        self.steps: dict[str, object] = {}

    def forward(self, x):
        step = self.steps.get(threading.current_thread().name)
        if step is not None:
            step()
        return self.norm(self.drop(self.fc(x)))


@pytest.mark.filterwarnings("ignore::profiler.UncountedWarning")  # each profile sees the other's calls
def test_overlapping_profiles_of_one_model_restore_every_flag():
    model = Choreographed().train()
    model.norm.eval()  # a model in training mode with one submodule in eval
    before = snapshot(model)
    x = torch.rand(3, 4)
    for _ in range(100):
        # first enters, then second enters (and saves the flags the first set), first leaves, second leaves
        first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def first_step() -> None:
            first_inside.set()
            assert second_inside.wait(10)

        def second_step() -> None:
            second_inside.set()
            assert first_done.wait(10)

        def run(name: str, after: threading.Event | None, done: threading.Event | None) -> None:
            try:
                if after is not None:
                    assert after.wait(10)
                profile(model, (x,))
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                errors.append(exc)
            finally:
                if done is not None:
                    done.set()

        model.steps = {"first": first_step, "second": second_step}
        threads = [threading.Thread(target=run, name="first", args=("first", None, first_done)),
                   threading.Thread(target=run, name="second", args=("second", first_inside, None))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        model.steps = {}
        assert not errors, errors
        assert [(n, m.training) for n, m in model.named_modules()] == before["training"]
    assert_unchanged(model, before)


def test_another_threads_forwards_are_named_with_what_they_saw():
    model = Choreographed().train()
    inside, seen = threading.Event(), threading.Event()
    modes: list[bool] = []

    def trainer() -> None:
        assert inside.wait(10)
        model(torch.rand(3, 4))  # a training forward while the profile runs
        modes.append(model.drop.training)
        seen.set()

    def main_step() -> None:
        inside.set()
        assert seen.wait(10)

    model.steps = {threading.current_thread().name: main_step}
    thread = threading.Thread(target=trainer)
    thread.start()
    with pytest.warns(UncountedWarning, match=r"those calls ran with the model in eval mode \(training flags are shared"):
        profile(model, (torch.rand(3, 4),))
    thread.join(10)
    model.steps = {}
    assert modes == [False]  # what the README says: the other thread saw eval mode
    assert model.training and model.drop.training


class Gated(nn.Module):
    """Linear, BatchNorm, a gate, Linear: in the profiling thread the gate runs ``step`` (another
    thread's work) while the profile holds the model; other threads pass straight through."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 2)
        self.step = None
        self.profiling_thread = None

    def forward(self, x):
        x = self.norm(self.fc(x))
        if self.step is not None and threading.current_thread() is self.profiling_thread:
            self.step()
        return self.out(x)


def changed_buffers(model: nn.Module, before: dict) -> set[str]:
    return {f"buffer {name!r}" for name, b in model.named_buffers() if not torch.equal(b, before[name])}


@pytest.mark.parametrize("raises", [False, True], ids=["profile succeeds", "profile's loss raises"])
def test_another_threads_training_step_is_rolled_back_by_name_and_its_graph_survives(raises):
    """Another thread trains the model while profile_training holds it: the warning (or the error's
    note) names each buffer update and gradient the restore rolled back, exactly; the graph it made
    before the profile still backpropagates after it (nothing was written into its saved tensors)."""
    model = Gated().train()
    ready, inside, done, after = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []
    rolled_back: set[str] = set()

    def trainer() -> None:
        try:
            pending = model(torch.randn(5, 4)).sum()  # saved the original BatchNorm statistics
            ready.set()
            assert inside.wait(10)
            buffers, rng = {name: b.clone() for name, b in model.named_buffers()}, torch.get_rng_state()
            model(torch.randn(5, 4)).sum().backward()  # a whole step while the profile holds the model
            rolled_back.update(changed_buffers(model, buffers))
            if not torch.equal(torch.get_rng_state(), rng):  # its draw (randn): the restore undoes it
                rolled_back.add("the random state")
            # the profile set every .grad to None when it took the model: these are this thread's
            rolled_back.update(f"gradient of {name!r}" for name, p in model.named_parameters() if p.grad is not None)
            done.set()
            assert after.wait(10)
            pending.backward()  # its next backward, after the profile restored the model
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors.append(exc)
            done.set()

    def main_step() -> None:
        inside.set()
        assert done.wait(10)

    thread = threading.Thread(target=trainer)
    thread.start()
    try:
        assert ready.wait(10)
        before, grads = snapshot(model), [p.grad for p in model.parameters()]
        model.step, model.profiling_thread = main_step, threading.current_thread()

        def loss(out):
            if raises:
                raise KeyError("no such output")
            return out.sum()

        with pytest.raises(CaptureError) if raises else contextlib.nullcontext() as info, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            profile_training(model, (torch.randn(5, 4),), loss=loss)
        model.step = None
        assert_unchanged(model, before)
        assert all(p.grad is g for p, g in zip(model.parameters(), grads))
    finally:
        model.step = None
        after.set()
        thread.join(30)
    assert not errors, errors
    # fc, norm and out ran in the other thread: BatchNorm's three statistics, six gradients, its draw
    assert len(rolled_back) == 3 + 6 + 1
    if raises:
        notes = getattr(info.value, "__notes__", [])
        assert len(notes) == 1
        listed = notes[0].split("rolled back that thread's work on ")[1]
    else:
        messages = [str(w.message) for w in caught if "another thread used the model" in str(w.message)]
        assert len(messages) == 1
        listed = messages[0].split("rolled back that thread's work on ")[1].split("; ")[0]
        ran = next(str(w.message) for w in caught if "called from other threads" in str(w.message))
        assert all(f"'{name}' ×1" in ran for name in ("fc", "norm", "out"))
    assert set(listed.split(", ")) == rolled_back


def test_another_thread_whose_work_the_restore_keeps_is_told_so():
    """Another thread runs a layer with no buffers and no backward while the profile holds the
    model: nothing of its work is rolled back, and the warning says that."""
    model = Gated().train()
    inside, done = threading.Event(), threading.Event()
    x = torch.randn(5, 4)  # drawn here: a draw in the other thread would be rolled back

    def other() -> None:
        assert inside.wait(10)
        model.fc(x)
        done.set()

    def main_step() -> None:
        inside.set()
        assert done.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    model.step, model.profiling_thread = main_step, threading.current_thread()
    try:
        with pytest.warns(UncountedWarning, match="rolled back none of that thread's buffer updates, gradients or random draws"):
            profile_training(model, (x,))
    finally:
        model.step = None
        thread.join(30)


class Aliased(nn.Module):
    """Linear then a running average kept as a buffer, which the module also reaches through a dict
    made at init: the forward writes it through the dict (the original), not the attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("avg", torch.ones(4))
        self.state = {"avg": self.avg}
        self.step = None
        self.profiling_thread = None

    def forward(self, x):
        if threading.current_thread() is self.profiling_thread:
            if self.step is not None:
                self.step()
        else:
            self.state["avg"].mul_(0.9)
        return self.fc(x) * self.avg


@pytest.mark.parametrize("draws", [False, True], ids=["no draw", "draws"])
def test_another_threads_alias_write_and_draws_are_named(draws):
    """Another thread, while the profile holds the model, writes a buffer through another reference
    and (or not) draws random numbers: the restore puts both back, and the warning says so."""
    model = Aliased()
    inside, done = threading.Event(), threading.Event()
    x = torch.randn(5, 4)

    def other() -> None:
        assert inside.wait(10)
        model(x)
        if draws:
            torch.rand(1)
        done.set()

    def main_step() -> None:
        inside.set()
        assert done.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    model.step, model.profiling_thread = main_step, threading.current_thread()
    before, rng = snapshot(model), torch.get_rng_state()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            profile_training(model, (x,))
    finally:
        model.step = None
        thread.join(30)
    assert_unchanged(model, before)
    assert model.state["avg"] is model.avg
    assert torch.equal(torch.get_rng_state(), rng)
    message = next(str(w.message) for w in caught if "another thread used the model" in str(w.message))
    listed = set(message.split("rolled back that thread's work on ")[1].split("; ")[0].split(", "))
    assert listed == {"buffer 'avg'"} | ({"the random state"} if draws else set())
