"""Two threads profiling one model at once leave every training flag as it was; another thread's
forwards meanwhile are named in the warning, which says they ran in eval mode."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from profiler import UncountedWarning, profile

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
