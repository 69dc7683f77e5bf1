"""Roofline estimates (profiler.roofline): per call the larger of FLOPs / peak and bytes /
bandwidth, summed up the layer tree; devices, dtypes, tables and exports."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from profiler import DEVICES, Device, RooflineResult, profile, profile_training
from profiler.roofline import lookup_device
from conftest import Block
from test_report import github_cells

H100 = DEVICES["H100-SXM5"]
F32 = torch.float32.itemsize


def roof(flops: float, nbytes: float, peak: float, bandwidth: float) -> float:
    """The roofline: a call takes at least its FLOPs at peak and at least its bytes at full bandwidth."""
    return max(flops / peak, nbytes / bandwidth)


def linear_4096(rows: int, *shape: int) -> RooflineResult:
    """``Linear(4096, 4096)`` in bfloat16 on ``rows`` rows (meta tensors: nothing is computed)."""
    with torch.device("meta"):
        model = nn.Linear(4096, 4096, dtype=torch.bfloat16)
        return profile(model, torch.rand(*(shape or (rows,)), 4096, dtype=torch.bfloat16)).roofline("H100-SXM5")


def linear_4096_bytes(rows: int) -> int:
    return 2 * rows * 4096 + 2 * 4096 * 4096 + 2 * 4096 + 2 * rows * 4096  # input, weight, bias; output


def test_linear_at_batch_1_is_memory_bound():
    estimate = linear_4096(1)
    assert estimate.time == linear_4096_bytes(1) / H100.bandwidth == linear_4096_bytes(1) / 3.35e12
    assert estimate.bound == estimate.root.bound == "memory"
    assert 2 * 1 * 4096 * 4096 / H100.flops["bfloat16"] < estimate.time
    assert (estimate.device, estimate.peak_dtype, estimate.peak) == (H100, "bfloat16", H100.flops["bfloat16"])
    assert estimate.dtype == torch.bfloat16  # the model's, as the result it came from


def test_linear_at_8192_rows_is_compute_bound():
    estimate = linear_4096(8192)
    assert estimate.total_flops == 2 * 8192 * 4096 * 4096
    assert estimate.time == 2 * 8192 * 4096 * 4096 / H100.flops["bfloat16"]
    assert estimate.bound == "compute"
    assert linear_4096_bytes(8192) / H100.bandwidth < estimate.time


def test_a_decoding_step_is_memory_bound_too():
    estimate = linear_4096(1, 1, 1)  # (batch, sequence, hidden): one token
    assert (estimate.time, estimate.bound) == (linear_4096_bytes(1) / H100.bandwidth, "memory")


# Linear(8, 16) on (3, 8) in float32
LINEAR_FLOPS = 2 * 3 * 8 * 16
LINEAR_BYTES = F32 * (3 * 8 + 16 * 8 + 16) + F32 * 3 * 16


@pytest.mark.parametrize(("flops", "bandwidth", "bound"), [
    pytest.param({"float32": 1e3}, 1e3, "memory", id="memory-bound"),
    pytest.param({torch.float32: 1e2}, 1e6, "compute", id="compute-bound, a torch.dtype key"),
])
def test_a_user_defined_device(flops, bandwidth, bound):
    device = Device("toy", flops, bandwidth=bandwidth)
    estimate = profile(nn.Linear(8, 16), torch.rand(3, 8)).roofline(device)
    peak = next(iter(flops.values()))
    assert (estimate.device, estimate.peak, estimate.bound) == (device, peak, bound)
    assert estimate.time == roof(LINEAR_FLOPS, LINEAR_BYTES, peak, bandwidth)


@pytest.mark.parametrize(("flops", "bandwidth"), [
    pytest.param({}, 1e12, id="no flops"),
    pytest.param({"float32": 0}, 1e12, id="zero peak"),
    pytest.param({"float32": -1e12}, 1e12, id="negative peak"),
    pytest.param({"float32": "1e12"}, 1e12, id="string peak"),
    pytest.param({"float32": True}, 1e12, id="bool peak"),
    pytest.param({"float32": float("nan")}, 1e12, id="nan peak"),
    pytest.param({"float32": 1e12}, 0, id="zero bandwidth"),
    pytest.param({"float32": 1e12}, -1.0, id="negative bandwidth"),
    pytest.param({"float32": 1e12}, True, id="bool bandwidth"),
    pytest.param({"float32": 1e12}, "3e12", id="string bandwidth"),
    pytest.param({"float32": 1e12}, float("nan"), id="nan bandwidth"),
])
def test_bad_device_values_are_refused_naming_the_value(flops, bandwidth):
    if bandwidth == 1e12:  # a valid bandwidth: the flops are bad
        message = f"flops must map dtype names to positive, finite peak FLOP/s, not {flops!r}"
    else:
        message = f"bandwidth must be a positive, finite number of bytes per second, not {bandwidth!r}"
    with pytest.raises(ValueError) as info:
        Device("bad", flops, bandwidth=bandwidth)
    assert str(info.value) == message


@pytest.mark.parametrize(("arguments", "error", "message"), [
    pytest.param(("toy", [1e12]), TypeError, "flops must be a mapping of dtype name to peak FLOP/s, "
                 "e.g. {'bfloat16': 989e12}, not list", id="flops a list"),
    pytest.param(("toy", None), TypeError, "flops must be a mapping of dtype name to peak FLOP/s, "
                 "e.g. {'bfloat16': 989e12}, not NoneType", id="flops None"),
    pytest.param((100, {"float32": 1e12}), TypeError, "name must be a string, not int", id="name an int"),
])
def test_device_arguments_of_the_wrong_type_are_refused_naming_them(arguments, error, message):
    with pytest.raises(error) as info:
        Device(*arguments, bandwidth=1e12)
    assert str(info.value) == message


@pytest.mark.parametrize(("flops", "bandwidth", "memory", "named"), [
    pytest.param({"float32": 10**400}, 1e12, None, "flops['float32']", id="peak"),
    pytest.param({"float32": 1e12}, 10**400, None, "bandwidth", id="bandwidth"),
    pytest.param({"float32": 1e12}, 1e12, 10**400, "memory", id="memory"),
    pytest.param({"float32": 1e12}, 10**5000, None, "bandwidth", id="more digits than int() prints"),
])
def test_a_figure_too_large_for_a_float_is_refused_naming_it(flops, bandwidth, memory, named):
    with pytest.raises(ValueError) as info:
        Device("toy", flops, bandwidth=bandwidth, memory=memory)
    assert str(info.value).startswith(f"{named} is too large to be a float (above {sys.float_info.max:.1e})")


def test_real_figures_of_any_kind_are_kept_as_floats():
    numpy = pytest.importorskip("numpy")
    from fractions import Fraction

    peak, bandwidth, memory = numpy.float32(1e3), numpy.int64(10**6), Fraction(80, 1)
    device = Device("toy", {"float32": peak}, bandwidth=bandwidth, memory=memory)
    assert (device.flops["float32"], device.bandwidth, device.memory) == (float(peak), float(bandwidth), float(memory))
    assert all(type(v) is float for v in (*device.flops.values(), device.bandwidth, device.memory))
    estimate = profile(nn.Linear(8, 16), torch.rand(3, 8)).roofline(device)
    assert estimate.time == roof(LINEAR_FLOPS, LINEAR_BYTES, float(peak), float(bandwidth))
    with pytest.raises(ValueError, match="flops must map dtype names to positive, finite peak FLOP/s"):
        Device("toy", {"float32": numpy.bool_(True)}, bandwidth=1e12)


def test_devices_are_read_only():
    published = {name: (dict(device.flops), device.bandwidth, device.memory) for name, device in DEVICES.items()}
    h100 = lookup_device("H100")
    with pytest.raises(TypeError):
        h100.flops["bfloat16"] = 1.0
    with pytest.raises(AttributeError):
        h100.bandwidth = 1.0
    with pytest.raises(TypeError):
        DEVICES["H100-SXM5"] = Device("H100-SXM5", {"bfloat16": 1.0}, bandwidth=1.0)
    assert {name: (dict(d.flops), d.bandwidth, d.memory) for name, d in DEVICES.items()} == published
    assert lookup_device("H100").peak("bfloat16") == published["H100-SXM5"][0]["bfloat16"]
    given = {"float32": 1e12}
    toy = Device("toy", given, bandwidth=1e12)
    given["float32"] = 1.0  # the caller's dict, changed after: the device keeps its own
    assert toy.peak("float32") == 1e12


def test_a_device_pickles_and_copies_equal():
    import copy
    import pickle

    for device in (H100, Device("toy", {torch.float16: 1e12}, bandwidth=2e12, memory=8e9)):
        for twin in (pickle.loads(pickle.dumps(device)), copy.deepcopy(device), copy.copy(device)):
            assert twin == device and hash(twin) == hash(device) and twin.memory == device.memory
    for twin in (pickle.loads(pickle.dumps(DEVICES)), copy.deepcopy(DEVICES), copy.copy(DEVICES)):
        assert dict(twin) == dict(DEVICES)


def test_an_unknown_device_lists_every_known_one():
    result = profile(nn.Linear(8, 16), torch.rand(3, 8))
    with pytest.raises(ValueError, match="unknown device 'B200'") as info:
        result.roofline("B200")
    for name in DEVICES:
        assert name in str(info.value)
    assert lookup_device(" h100 ") is lookup_device("H100-SXM5") is H100  # names and aliases, any case
    with pytest.raises(TypeError, match="device must be a device name or a Device, not int"):
        result.roofline(100)


def test_a_dtype_the_device_has_no_figure_for():
    result = profile(nn.Linear(8, 16).double(), torch.rand(3, 8, dtype=torch.float64))
    message = f"L4 has no peak FLOP/s for float64; it has {', '.join(DEVICES['L4'].flops)}"
    with pytest.raises(ValueError, match=message):
        result.roofline("L4")  # the default: the parameters' dtype
    with pytest.raises(ValueError, match="H100-SXM5 has no peak FLOP/s for int4"):
        profile(nn.Linear(8, 16), torch.rand(3, 8)).roofline("H100", dtype="int4")


@pytest.mark.parametrize(("model_dtype", "dtype", "name"), [
    pytest.param(torch.float32, None, "float32", id="float32 model"),
    pytest.param(torch.bfloat16, None, "bfloat16", id="bfloat16 model"),
    pytest.param(torch.float32, "tf32", "tf32", id="float32 model at the tf32 peak"),
    pytest.param(torch.float32, torch.float16, "float16", id="a torch.dtype"),
    pytest.param(torch.float32, "fp8", "float8", id="an alias"),
])
def test_dtype_defaults_to_the_parameters_and_can_be_overridden(model_dtype, dtype, name):
    model = nn.Linear(8, 16, dtype=model_dtype)
    estimate = profile(model, torch.rand(3, 8, dtype=model_dtype)).roofline("H100-SXM5", dtype=dtype)
    assert (estimate.peak_dtype, estimate.peak) == (name, H100.flops[name])
    nbytes = LINEAR_BYTES * model_dtype.itemsize // F32
    assert estimate.time == roof(LINEAR_FLOPS, nbytes, H100.flops[name], H100.bandwidth)


@pytest.fixture
def blocks():
    """A layer that calls a torch function itself (Block's add) and leaves under it."""
    torch.manual_seed(0)
    return profile(nn.Sequential(Block(), nn.Linear(8, 4)), torch.rand(3, 8)).roofline("A100")


def test_each_layer_is_its_own_estimate_plus_its_childrens(blocks):
    for layer in blocks.layers:
        assert layer.roofline_time == pytest.approx(layer.own_roofline_time + sum(c.roofline_time for c in layer.children),
                                                    rel=1e-12), layer.name


def test_the_total_is_the_sum_of_each_calls_estimate(blocks):
    peak, bandwidth = DEVICES["A100-SXM4-80GB"].flops["float32"], DEVICES["A100-SXM4-80GB"].bandwidth
    leaves = [layer for layer in blocks.layers if not layer.children]
    assert [layer.name for layer in leaves] == ["0.proj", "0.act", "1"]
    for leaf in leaves:
        assert leaf.roofline_time == roof(leaf.total.flops, leaf.bytes, peak, bandwidth), leaf.name
        assert leaf.bound == ("compute" if leaf.total.flops / peak >= leaf.bytes / bandwidth else "memory")
    add = roof(3 * 8, F32 * 3 * 8 * 2 + F32 * 3 * 8, peak, bandwidth)  # Block's x + ...: one FLOP per element
    assert blocks.layer("0").own_roofline_time == add
    assert blocks.layer("0").functions[0].roofline_time == add
    assert blocks.time == pytest.approx(add + sum(leaf.roofline_time for leaf in leaves), rel=1e-12)
    assert blocks.layer("1").roofline_time == roof(2 * 3 * 8 * 4, F32 * (3 * 8 + 4 * 8 + 4 + 3 * 4), peak, bandwidth)


def test_to_dict_and_csv_carry_the_estimates(blocks):
    report = json.loads(json.dumps(blocks.to_dict()))
    assert (report["totals"]["roofline_time"], report["totals"]["bound"]) == (blocks.time, blocks.bound)
    assert [(entry["name"], entry["roofline_time"], entry["bound"]) for entry in report["layers"]] == \
        [(layer.name, layer.roofline_time, layer.bound) for layer in blocks.layers]
    assert "roofline_time" not in blocks.source.to_dict()["totals"]
    assert blocks.to_csv().splitlines()[0].endswith(",roofline_time,bound")


def test_the_roofline_table_has_estimate_columns_and_a_plain_table_refuses_them(blocks):
    header, body = github_cells(blocks.table(tablefmt="github", units="exact"))
    assert header == ["Layer", "Type", "FLOPs", "Bytes", "FLOP/B", "Est. time", "Bound"]
    assert body[-1][0] == "Total" and body[-1][-1] == blocks.bound
    assert body[-1][3] == f"{blocks.total_bytes:,}"
    plain = blocks.source
    for options in ({"columns": ["layer", "roofline_time"]}, {"columns": "layer,bound"}, {"sort_by": "roofline_time"}):
        with pytest.raises(ValueError, match="needs a device: result.roofline"):
            plain.table(**options)


def test_a_training_step_takes_at_least_its_forward():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)), torch.rand(3, 8)
    training = profile_training(model, inputs=(x,)).roofline("H100-SXM5")
    forward = profile(model, x).roofline("H100-SXM5")
    assert training.time > forward.time
    for name in ("0", "1", "2"):
        assert training.layer(name).roofline_time > forward.layer(name).roofline_time, name
    peak, bandwidth = H100.flops["float32"], H100.bandwidth
    for leaf in (training.layer(name) for name in ("0", "1", "2")):  # the forward's call, then the backward's
        assert leaf.own_roofline_time == pytest.approx(
            roof(leaf.own.flops, leaf.own_bytes, peak, bandwidth)
            + roof(leaf.own_backward.flops, leaf.own_backward_bytes, peak, bandwidth), rel=1e-12), leaf.name
    header = training.table(depth=1).splitlines()[0]
    assert "Bwd FLOPs" in header and "Est. time" in header  # the estimate includes the backward: so does the table
    data = training.to_dict()["layers"]
    assert [d["own_backward_bytes"] for d in data] == [l.own_backward_bytes for l in training.layers]


class TwoProducts(nn.Module):
    """A compute-bound GEMM and a memory-bound GEMV in one layer, both by torch.matmul."""

    def forward(self, a, b, c, d):
        return torch.matmul(a, b), torch.matmul(c, d)


def test_each_call_is_estimated_on_its_own_not_its_group():
    with torch.device("meta"):
        a, b = torch.empty(4096, 4096, dtype=torch.bfloat16), torch.empty(4096, 4096, dtype=torch.bfloat16)
        c, d = torch.empty(1, 4096, dtype=torch.bfloat16), torch.empty(4096, 65536, dtype=torch.bfloat16)
    estimate = profile(TwoProducts(), (a, b, c, d)).roofline("H100-SXM5")
    peak, bandwidth = H100.flops["bfloat16"], H100.bandwidth
    gemm = roof(2 * 4096 * 4096 * 4096, 2 * 3 * 4096 * 4096, peak, bandwidth)  # bound by its FLOPs
    gemv = roof(2 * 4096 * 65536, 2 * (4096 + 4096 * 65536 + 65536), peak, bandwidth)  # by its bytes
    assert estimate.time == pytest.approx(gemm + gemv, rel=1e-12)
    (matmuls,) = estimate.root.functions
    assert matmuls.roofline_time == estimate.time and matmuls.calls == 2
    assert estimate.bound == ("compute" if gemm >= gemv else "memory")  # the roof most of the time is spent at


def test_dtype_names_are_case_insensitive_and_a_device_names_known_ones_once():
    linear = profile(nn.Linear(8, 16).to(torch.bfloat16), torch.rand(3, 8, dtype=torch.bfloat16))
    assert linear.roofline("h100", "BF16").peak == linear.roofline("H100-SXM5").peak == H100.flops["bfloat16"]
    with pytest.raises(ValueError, match="unknown dtype name\\(s\\) 'bfloat' in flops; known: float64, float32"):
        Device("typo", {"bfloat": 1e12}, bandwidth=1e12)
    with pytest.raises(ValueError, match="names one dtype twice"):
        Device("fp8", {"float8_e4m3fn": 1e15, "float8_e5m2": 2e15}, bandwidth=1e12)
    twin = Device("H100-SXM5", dict(H100.flops), bandwidth=H100.bandwidth)  # another object, equal
    assert twin == H100 and hash(twin) == hash(H100) and {H100: 1}[twin] == 1


def test_a_run_timed_on_cuda_shows_measured_time_next_to_the_estimate():
    timed = profile(nn.Linear(8, 16), torch.rand(3, 8), measure_time=True, repeats=1, warmup=0)
    assert timed.timed_on == "cpu"
    assert "Time" not in timed.roofline("L4").table().splitlines()[0].replace("Est. time", "")  # no match for a GPU
    assert "Time" in timed.roofline("L4").table(columns="layer,roofline_time,time")  # unless asked for
    timed.timed_on = "cuda"  # as a CUDA run records it (no GPU here)
    header = timed.roofline("L4").table().splitlines()[0].split()
    assert header[header.index("Est.") + 2] == "Time"  # "Est. time" then the measured "Time"
    data = timed.roofline("L4").to_dict()
    assert data["roofline"] == {"device": "L4", "dtype": "float32", "peak_flops": DEVICES["L4"].flops["float32"],
                                "bandwidth": DEVICES["L4"].bandwidth}


def test_tables_name_the_device_and_a_ranking_gives_each_row_its_own_bound():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    estimate = profile(model, torch.rand(3, 8)).roofline("rtx 4090")  # as the issue spells it
    assert estimate.device is DEVICES["RTX-4090"]
    note = "Est. time on RTX-4090: float32 at 82.60T FLOP/s, 1.01T B/s; per call, max(FLOPs/peak, bytes/BW)."
    assert estimate.table().splitlines()[-1] == note and note in estimate.html()
    ranked = {line.split()[0]: line.split() for line in estimate.table(sort_by="roofline_time").splitlines()[2:6]}
    assert ranked["Sequential"][-1] == "s"  # its own calls take no time: no bound ("0 s" ends the row)
    assert ranked["0"][-1] == "memory"
