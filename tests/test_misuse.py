"""Each misuse in the README's bad-input table gets the error the table says, and nothing changes.

One case per row; the ``row`` ids are the README's first column.
"""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from hooks import REGISTRY, Counts, Registry
from profiler import (
    CaptureError, Device, LossError, RuleError, UncountedError, UncountedWarning, profile, profile_generation,
    profile_training,
)
from profiler.units import clever_format, format_count


class Raises(nn.Module):
    def forward(self, x):
        raise ValueError("boom")


class Opaque(nn.Module):
    def forward(self, x):
        return [0.5]


def bad_type_rule(module, inputs, output):
    return "many"


def failing_rule(module, inputs, output):
    raise ZeroDivisionError("bad rule")


with torch.device("meta"):
    META_LINEAR = nn.Linear(4, 4)

X = torch.rand(2, 4)
IDS = torch.tensor([[1, 2, 3]])


class Seq2Seq(nn.Module):
    """An encoder-decoder's signature: the forward takes decoder ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 10)

    def forward(self, input_ids, decoder_input_ids=None, past_key_values=None):
        return self.head(self.embed(input_ids)), past_key_values


class Forgetful(Seq2Seq):
    """Takes past_key_values and returns a new cache of the tokens it was fed."""

    def forward(self, input_ids, past_key_values=None):
        h = self.embed(input_ids)
        return self.head(h), ((h, h),)


def backward_inside(output):
    loss = output.sum()
    loss.backward()
    return loss


ROWS = [
    pytest.param(lambda: profile(nn.Linear, X), TypeError,
                 "model must be an nn.Module instance, not the class Linear; call it first", id="a class"),
    pytest.param(lambda: profile("resnet50", X), TypeError, "model must be an nn.Module, not str", id="not a module"),
    pytest.param(lambda: profile(nn.Linear(4, 4), {"x": X}), TypeError,
                 "inputs must be a tensor or a tuple/list of forward's arguments, not dict (pass keyword arguments as kwargs=...)",
                 id="inputs a dict"),
    pytest.param(lambda: profile(nn.Linear(4, 4), 3), TypeError,
                 "inputs must be a tensor or a tuple/list of forward's arguments, not int", id="inputs a number"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, input_size=(2, 4)), TypeError,
                 "pass either inputs= or input_size=, not both", id="both inputs and input_size"),
    pytest.param(lambda: profile(nn.Linear(4, 4)), TypeError,
                 "nothing to call forward with: pass inputs=(x,), input_size=(...) or kwargs={...}", id="no inputs"),
    pytest.param(lambda: profile(nn.Linear(4, 4), input_size=(2, -4)), ValueError,
                 "input_size must be a sequence of non-negative ints", id="bad input_size"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, input_dtype=torch.long), TypeError,
                 "input_dtype= goes with input_size=", id="input_dtype without input_size"),
    pytest.param(lambda: profile(nn.Sequential(nn.Linear(4, 4), Raises()), X), CaptureError,
                 "the model's forward raised ValueError while running layer '1' (Raises) with input shapes [(2, 4)]: boom",
                 id="forward raises"),
    pytest.param(lambda: profile(nn.Sequential(nn.Linear(4, 4)), X, custom_ops={nn.Linear: failing_rule}), RuleError,
                 "rule failing_rule failed on layer '0' (Linear) with input shapes [(2, 4)]: bad rule", id="rule raises"),
    pytest.param(lambda: profile(nn.Sequential(nn.Linear(4, 4)), X, custom_ops={nn.Linear: bad_type_rule}), RuleError,
                 "rule bad_type_rule failed on layer '0' (Linear) with input shapes [(2, 4)]: the rule returned str",
                 id="rule returns a non-number"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, custom_ops={nn.Linear: lambda m, i, o: -1}), RuleError,
                 "the rule returned -1: MACs is -1, below 0", id="rule returns a negative number"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, custom_ops={nn.Linear: lambda m, i, o: Counts(4, 2.5, 0)}),
                 RuleError, "failed on the model (Linear) with input shapes [(2, 4)]: flops is 2.5, not a whole number",
                 id="rule returns counts that are not whole numbers"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, custom_ops={"Linear": len}), TypeError,
                 "custom_ops keys must be nn.Module subclasses, not 'Linear'", id="custom_ops key not a module type"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, custom_ops={nn.Linear: 3}), TypeError,
                 "custom_ops[Linear] must be callable fn(module, inputs, output), not 3", id="custom_ops value not callable"),
    pytest.param(lambda: profile(META_LINEAR, X), ValueError,
                 "the model is on meta but inputs[0] is on cpu; move one of them, e.g. inputs[0].to('meta') or model.to('cpu')",
                 id="model and inputs on different devices"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, verbosity=1), TypeError,
                 "profile() got an unexpected keyword argument 'verbosity'", id="unknown keyword"),
    pytest.param(lambda: profile(nn.Sequential(Opaque()), X, strict=True), UncountedError,
                 "strict=True and these ran without a rule: module Opaque ×1 (in '0')", id="strict and uncounted"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X, measure_time=True, repeats=0), ValueError,
                 "repeats must be a positive integer, not 0", id="bad repeats"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X).table(columns=("layer", "weights")), ValueError,
                 "unknown column(s) 'weights'; valid columns: layer, type", id="unknown column"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X).table(sort_by="latency"), ValueError,
                 "unknown sort key 'latency'; valid keys: macs, flops, params, time", id="unknown sort key"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X).table(sort_by="time"), ValueError,
                 "sort_by='time' needs timings: profile(..., measure_time=True)", id="time without timings"),
    pytest.param(lambda: profile(nn.Linear(4, 4), X).table(layer="encoder"), ValueError,
                 "no layer named 'encoder'", id="unknown layer"),
    pytest.param(lambda: profile_generation(Seq2Seq(), IDS, max_new_tokens=2), TypeError,
                 "profile_generation does not support encoder-decoder models yet, and Seq2Seq is one",
                 id="generation of an encoder-decoder model"),
    pytest.param(lambda: profile_generation(Forgetful(), IDS, max_new_tokens=2), TypeError,
                 "Forgetful.forward takes past_key_values but does not continue from it: after decode step 1 the cache "
                 f"holds {1 * 4 * 4:,} bytes where the cache it was given held {3 * 4 * 4:,}",  # (h, h): one memory
                 id="generation with a forward that does not continue from its cache"),
    pytest.param(lambda: profile_training(nn.Linear(4, 4), X, loss=backward_inside), LossError,
                 "the loss ran a backward itself (it accumulated the gradient of 'weight' and 1 more): return the loss "
                 "without calling .backward() on it", id="a loss that runs its own backward"),
    pytest.param(lambda: Device("toy", [1e12], bandwidth=1e12), TypeError,
                 "flops must be a mapping of dtype name to peak FLOP/s, e.g. {'bfloat16': 989e12}, not list",
                 id="a device's flops not a mapping"),
]


@pytest.mark.parametrize(("call", "error", "message"), ROWS)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


def test_forward_error_chains_the_original():
    with pytest.raises(CaptureError) as info:
        profile(nn.Sequential(Raises()), X)
    assert isinstance(info.value.__cause__, ValueError)


def test_registering_a_second_rule_is_refused():
    registry = Registry()
    registry.module_rule(nn.Linear)(lambda m, i, o: Counts())

    def other_counts(module, inputs, output):
        return Counts()

    with pytest.raises(ValueError, match="Linear already has the rule <lambda>; refusing other_counts"):
        registry.module_rule(nn.Linear)(other_counts)
    with pytest.raises(TypeError, match="is not an nn.Module subclass"):
        registry.module_rule(int)(other_counts)
    with pytest.raises(ValueError, match="already has the rule linear_counts"):
        REGISTRY.module_rule(nn.Linear)(other_counts)


def test_nested_profile_raises_a_clear_error():
    class Nested(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(4, 4)

        def forward(self, x):
            profile(self.inner, x)
            return self.inner(x)

    model = Nested()
    with pytest.raises(CaptureError, match="a profile was started while another profile runs in this thread"):
        profile(model, X)
    assert profile(model.inner, X).total_macs == 2 * 4 * 4  # and profiling works again afterwards


def test_two_threads_profile_two_models_at_once():
    barrier = threading.Barrier(2)
    results = {}

    class Slow(nn.Module):
        """Waits inside its forward until the other thread is profiling too."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.a = nn.Linear(width, width)
            self.b = nn.Linear(width, width)

        def forward(self, x):
            x = self.a(x)
            barrier.wait(timeout=30)
            return self.b(x) @ torch.ones(x.shape[-1], 2)

    def run(width: int) -> None:
        results[width] = profile(Slow(width), torch.rand(3, width))

    threads = [threading.Thread(target=run, args=(w,)) for w in (4, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for width in (4, 8):
        # two Linear layers and the matmul with a [width, 2] matrix, on 3 rows
        assert results[width].total_macs == 2 * 3 * width * width + 3 * width * 2
        assert results[width].layer("").functions[0].function == "torch.Tensor.matmul"


def test_another_thread_running_the_model_meanwhile_is_not_counted():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    x = torch.rand(3, 4)
    alone = profile(model, x)
    stop = threading.Event()
    calls = []

    def serve() -> None:  # another thread keeps using the same model, e.g. a server
        while not stop.is_set():
            with torch.no_grad():
                calls.append(model(x))

    server = threading.Thread(target=serve)
    server.start()
    try:
        while not calls:
            time.sleep(0.001)
        with warnings.catch_warnings():  # the server's calls are named in a warning when they overlap
            warnings.simplefilter("ignore", UncountedWarning)
            results = [profile(model, x) for _ in range(20)]
    finally:
        stop.set()
        server.join()
    assert len(calls) > 1
    for result in results:
        # two Linear(4, 4) on 3 rows, once: the other thread's calls are its own
        assert result.total_macs == alone.total_macs == 2 * 3 * 4 * 4
        assert [layer.calls for layer in result.layers] == [1, 1, 1, 1]


class Pooled(nn.Module):
    """Hands one of its layers to a thread pool: work the profiling thread does not see."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self.pool = pool
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.pool.submit(self.a, x).result() + self.b(x)


def test_layers_run_by_another_thread_are_named_in_a_warning():
    with ThreadPoolExecutor(1) as pool:
        model = Pooled(pool)
        with pytest.warns(UncountedWarning, match="other threads while profiling were not counted: 'a' ×1"):
            result = profile(model, torch.rand(2, 4))
        assert result.total_macs == 2 * 4 * 4  # b only
        with pytest.raises(UncountedError, match="strict=True and layers called from other threads"):
            profile(model, torch.rand(2, 4), strict=True)


@pytest.mark.parametrize(
    ("value", "human", "exact"),
    [
        pytest.param(0, "0", "0", id="zero"),
        pytest.param(999, "999", "999", id="below-a-thousand"),
        pytest.param(10**3, "1.00K", "1,000", id="thousand"),
        pytest.param(2**53 + 1, "9.01P", f"{2**53 + 1:,}", id="beyond-float53"),
        pytest.param(1234 * 10**18, "1234.00E", f"{1234 * 10**18:,}", id="beyond-exa"),
    ],
)
def test_large_and_small_counts_format_exactly(value, human, exact):
    assert format_count(value, "human") == human
    assert format_count(value, "exact") == exact
    assert format_count(value, "exact").replace(",", "") == str(value)


def test_clever_format_keeps_thops_scale():
    assert clever_format([0, 0.5, 2**53 + 1]) == ("0.00B", "0.50B", f"{(2**53 + 1) / 1e12:.2f}T")


def test_counts_beyond_2_53_are_exact_ints():
    # a [1, 2**28 + 1] x [2**28 + 1, 2**27 + 1] matmul on meta: an odd count above 2**55, which a
    # float64 cannot hold exactly
    class Huge(nn.Module):
        def forward(self, a, b):
            return a @ b

    a = torch.empty(1, 2**28 + 1, device="meta")
    b = torch.empty(2**28 + 1, 2**27 + 1, device="meta")
    result = profile(Huge(), (a, b))
    macs = (2**28 + 1) * (2**27 + 1)
    assert macs > 2**55 and float(macs) != macs
    assert result.total_macs == macs and isinstance(result.total_macs, int)
    assert result.total_flops == 2 * macs
    assert f"{macs:,}" in result.table(units="exact")
    assert result.to_dict()["totals"]["macs"] == macs


def test_counts_add_field_by_field_and_refuse_repetition():
    a, b = Counts.matmul(3), Counts.elementwise(5, macs=1)
    assert a + b == Counts(3 + 1, 2 * 3 + 5, 2 * 3)
    with pytest.raises(TypeError):
        a * 2  # a tuple would repeat itself into six numbers
    with pytest.raises(TypeError):
        a + (1, 2, 3)
