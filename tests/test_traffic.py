"""Bytes each call reads and writes (hooks.traffic): closed forms from shapes and dtypes, the free
copies, views, gathers and in-place modules, and the layer tree's totals, table and export."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hooks import REGISTRY, capture_forward
from profiler import profile, profile_training
from conftest import Call
from test_report import github_cells

F32, F16, I64 = (dtype.itemsize for dtype in (torch.float32, torch.float16, torch.int64))


def moved(model: nn.Module, *inputs: torch.Tensor) -> tuple[int, int]:
    result = profile(model, inputs)
    return result.bytes_read, result.bytes_written


def test_linear_bfloat16_reads_input_weight_bias_and_writes_its_output():
    model = nn.Linear(4096, 4096, dtype=torch.bfloat16)
    read, written = moved(model, torch.rand(1, 4096, dtype=torch.bfloat16))
    assert read == 2 * 4096 + 2 * 4096 * 4096 + 2 * 4096  # input, weight, bias
    assert written == 2 * 4096


@pytest.mark.parametrize(("model", "shape", "read", "written"), [
    pytest.param(nn.Linear(8, 16), (3, 8), F32 * (3 * 8 + 16 * 8 + 16), F32 * 3 * 16, id="linear"),
    pytest.param(nn.Conv2d(3, 8, 3, padding=1), (2, 3, 10, 10),
                 F32 * (2 * 3 * 10 * 10 + 8 * 3 * 3 * 3 + 8), F32 * 2 * 8 * 10 * 10, id="conv2d"),
    # [1, 6, 4, 4] = conv([1, 4, 9, 9]) with stride 2; weight [6, 4, 3, 3], no bias
    pytest.param(nn.Conv2d(4, 6, 3, stride=2, bias=False), (1, 4, 9, 9),
                 F32 * (1 * 4 * 9 * 9 + 6 * 4 * 3 * 3), F32 * 1 * 6 * 4 * 4, id="conv2d stride 2 no bias"),
    pytest.param(nn.ReLU(inplace=True), (4, 5), F32 * 4 * 5, F32 * 4 * 5, id="relu in place"),
    pytest.param(nn.ReLU(), (4, 5), F32 * 4 * 5, F32 * 4 * 5, id="relu"),
    pytest.param(nn.Identity(), (4, 5), 0, 0, id="identity"),
    pytest.param(nn.Dropout(0.5), (4, 5), 0, 0, id="dropout in eval"),
    pytest.param(nn.Flatten(), (2, 4, 5), 0, 0, id="flatten"),
    pytest.param(nn.Linear(8, 16, bias=False), (2, 3, 8), F32 * (2 * 3 * 8 + 16 * 8), F32 * 2 * 3 * 16,
                 id="linear 3d no bias"),
    # F.linear with a bias on more than 2 dims returns a view of its addmm's output
    pytest.param(nn.Linear(8, 16), (2, 3, 8), F32 * (2 * 3 * 8 + 16 * 8 + 16), F32 * 2 * 3 * 16, id="linear 3d"),
    pytest.param(nn.Conv1d(4, 6, 3), (4, 10), F32 * (4 * 10 + 6 * 4 * 3 + 6), F32 * 6 * 8, id="conv1d unbatched"),
    # nothing is written: eval Dropout hands its input back, in place or not
    pytest.param(nn.Dropout(0.5, inplace=True), (4, 5), 0, 0, id="dropout in place in eval"),
])
def test_module_bytes_closed_form(model, shape, read, written):
    assert moved(model, torch.rand(shape)) == (read, written)


def test_embedding_reads_its_indices_and_the_rows_it_returns_not_its_table():
    table = nn.Embedding(1000, 64)
    read, written = moved(table, torch.tensor([[1, 2, 3, 2, 999], [0, 0, 0, 0, 0]]))
    assert read == I64 * 2 * 5 + F32 * 2 * 5 * 64
    assert written == F32 * 2 * 5 * 64
    assert read < F32 * 1000 * 64


X, Y = torch.rand(4, 5), torch.rand(4, 5)
TABLE, INDICES = torch.rand(10, 6), torch.tensor([1, 3, 3])
ROW, COLUMN = torch.rand(1, 6).expand(10, 6), torch.rand(10, 1).expand(10, 6)


@pytest.mark.parametrize(("fn", "inputs", "read", "written"), [
    pytest.param(torch.add, (X, Y), F32 * 4 * 5 * 2, F32 * 4 * 5, id="x + y"),
    pytest.param(lambda x: x + x, (X,), F32 * 4 * 5, F32 * 4 * 5, id="x + x reads x once"),
    pytest.param(lambda x: x.t(), (X,), 0, 0, id="transpose"),
    pytest.param(lambda x: x.view(20), (X,), 0, 0, id="view"),
    pytest.param(lambda x: x[1:3], (X,), 0, 0, id="slice"),
    pytest.param(lambda x: x.t().contiguous(), (X,), F32 * 4 * 5, F32 * 4 * 5, id="contiguous of a transpose"),
    pytest.param(lambda x: x.contiguous(), (X,), 0, 0, id="contiguous of a contiguous tensor"),
    pytest.param(lambda x: x.to(torch.float16), (X,), F32 * 4 * 5, F16 * 4 * 5, id="to float16"),
    pytest.param(lambda x: x.to(torch.float32), (X,), 0, 0, id="to its own dtype"),
    pytest.param(F.relu, (X,), F32 * 4 * 5, F32 * 4 * 5, id="F.relu"),
    pytest.param(lambda x: x.clone().relu_(), (X,), F32 * 4 * 5 * 2, F32 * 4 * 5 * 2, id="clone then relu_"),
    pytest.param(lambda x: x.t().reshape(-1).view(4, 5), (X,), F32 * 4 * 5, F32 * 4 * 5, id="a copy between views"),
    pytest.param(torch.add, (ROW, TABLE), F32 * (6 + 10 * 6), F32 * 10 * 6, id="expanded row"),
    pytest.param(torch.mul, (ROW, COLUMN), F32 * (6 + 10), F32 * 10 * 6, id="expanded row times expanded column"),
    pytest.param(lambda x: x + x, (ROW,), F32 * 6, F32 * 10 * 6, id="expanded x + x"),
    pytest.param(lambda t, i: t[i], (TABLE, INDICES), I64 * 3 + F32 * 3 * 6, F32 * 3 * 6, id="x[indices]"),
    pytest.param(lambda t, i: t.index_select(0, i), (TABLE, INDICES), I64 * 3 + F32 * 3 * 6, F32 * 3 * 6,
                 id="index_select"),
    pytest.param(lambda i, t: F.embedding(i, t), (INDICES, TABLE), I64 * 3 + F32 * 3 * 6, F32 * 3 * 6,
                 id="F.embedding"),
    pytest.param(lambda x: F.relu(x.clone(), inplace=True), (X,), F32 * 4 * 5 * 2, F32 * 4 * 5 * 2,
                 id="clone then F.relu in place"),
    pytest.param(lambda x: F.relu(x.clone(), True), (X,), F32 * 4 * 5 * 2, F32 * 4 * 5 * 2,
                 id="clone then F.relu in place, positionally"),
    # in place: metadata only, overwrites, scatters
    pytest.param(lambda x: x.clone().unsqueeze_(0), (X,), F32 * 4 * 5, F32 * 4 * 5, id="clone then unsqueeze_"),
    pytest.param(lambda x: torch.empty_like(x).copy_(x), (X,), F32 * 4 * 5, F32 * 4 * 5,
                 id="empty_like then copy_ reads the source only"),
    pytest.param(lambda x: x.clone().zero_(), (X,), F32 * 4 * 5, F32 * 4 * 5 * 2, id="clone then zero_"),
    pytest.param(lambda t, i, v: t.clone().index_copy_(0, i, v), (TABLE, INDICES[:2], torch.rand(2, 6)),
                 F32 * 10 * 6 + I64 * 2 + F32 * 2 * 6, F32 * 10 * 6 + F32 * 2 * 6, id="clone then index_copy_ of 2 rows"),
    pytest.param(lambda t, v: t.clone().__setitem__((slice(None), 1), v), (TABLE, torch.rand(10)),
                 F32 * 10 * 6 + F32 * 10, F32 * 10 * 6 + F32 * 10, id="clone then x[:, 1] = v"),
    # factories and casts
    pytest.param(torch.empty_like, (X,), 0, 0, id="empty_like moves nothing"),
    pytest.param(torch.zeros_like, (X,), 0, F32 * 4 * 5, id="zeros_like writes only"),
    pytest.param(lambda x: x.long(), (X,), F32 * 4 * 5, I64 * 4 * 5, id="long()"),
    pytest.param(lambda x: x.to(torch.long), (X,), F32 * 4 * 5, I64 * 4 * 5, id="to(long)"),
    pytest.param(lambda x: x.bool(), (X,), F32 * 4 * 5, 1 * 4 * 5, id="bool()"),
])
def test_function_bytes_closed_form(fn, inputs, read, written):
    assert moved(Call(fn), *inputs) == (read, written)


class CatLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, a, b):
        return self.lin(torch.cat([a, b]))


def test_cat_in_a_traced_module_is_a_free_record_with_bytes_on_the_layer_and_no_row():
    model, a, b = CatLinear(), torch.rand(4, 5), torch.rand(3, 5)
    cat = (F32 * (4 * 5 + 3 * 5), F32 * 7 * 5)
    lin = (F32 * (7 * 5 + 5 * 5 + 5), F32 * 7 * 5)
    records = capture_forward(model, lambda: model(a, b), REGISTRY.resolver()).records
    (record,) = [r for r in records if r.function == "torch.cat"]
    assert (record.status, record.flops, record.bytes_read, record.bytes_written) == ("free", 0, *cat)
    result = profile(model, (a, b))
    assert (result.root.own_bytes_read, result.root.own_bytes_written) == cat
    assert (result.layer("lin").bytes_read, result.layer("lin").bytes_written) == lin
    assert result.total_bytes == sum(cat) + sum(lin)
    assert result.root.functions == ()
    labels = [row[0].lstrip("│├└─ ") for row in github_cells(result.table(tablefmt="github"))[1]]
    assert labels == ["CatLinear", "lin", "Total"]


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2 * 4 * 6 * 6, 10)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(torch.cat([h, h.transpose(2, 3)], 1).flatten(1))


def test_meta_device_moves_the_same_bytes_as_cpu():
    cpu = profile(Small(), torch.rand(2, 3, 8, 8))
    with torch.device("meta"):
        meta = profile(Small(), torch.rand(2, 3, 8, 8))
    assert cpu.root.own_bytes > 0 and cpu.layer("conv").bytes > 0
    assert [(l.name, l.bytes_read, l.bytes_written) for l in meta.layers] == \
        [(l.name, l.bytes_read, l.bytes_written) for l in cpu.layers]


class Scripted(nn.Module):
    def forward(self, x):
        return x.t().reshape(-1).view(4, 5)  # one copy between two views


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")
def test_a_scripted_module_moves_what_it_moves_eagerly():
    assert moved(Call(torch.jit.script(Scripted())), X) == moved(Scripted(), X) == (F32 * 4 * 5, F32 * 4 * 5)


def test_the_backward_of_a_view_moves_nothing():
    model = nn.Sequential(nn.Linear(5, 6), Call(lambda h: h.t()), Call(lambda h: h.unsqueeze(0)))
    training = profile_training(model, inputs=(X,))
    assert (training.layer("1").own_backward_bytes, training.layer("2").own_backward_bytes) == (0, 0)


def test_views_and_copies_under_inference_mode():
    with torch.inference_mode():
        x = torch.rand(4, 5)
        assert moved(Call(lambda t: t.t()), x) == (0, 0)
        assert moved(Call(lambda t: t.t().contiguous()), x) == (F32 * 4 * 5, F32 * 4 * 5)


def test_a_view_module_under_inference_mode_moves_nothing():
    with torch.inference_mode():
        assert moved(nn.Flatten(), torch.rand(2, 4, 5)) == (0, 0)


@pytest.fixture(scope="module", params=["resnet18", "encoder layer"])
def big(request):
    torch.manual_seed(0)
    if request.param == "resnet18":
        return profile(torchvision.models.resnet18(weights=None), torch.rand(1, 3, 64, 64))
    return profile(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), torch.rand(2, 7, 32))


def test_own_bytes_add_up_to_the_totals(big):
    assert big.total_bytes > 0
    assert sum(l.own_bytes_read for l in big.layers) == big.bytes_read
    assert sum(l.own_bytes_written for l in big.layers) == big.bytes_written
    assert sum(l.own_bytes for l in big.layers) == big.total_bytes == big.bytes_read + big.bytes_written
    for layer in big.layers:
        assert layer.bytes_read == layer.own_bytes_read + sum(c.bytes_read for c in layer.children), layer.name
        assert layer.bytes_written == layer.own_bytes_written + sum(c.bytes_written for c in layer.children), layer.name


def test_arithmetic_intensity_is_flops_per_byte(big):
    assert big.arithmetic_intensity == big.total_flops / big.total_bytes
    for layer in big.layers:
        assert layer.intensity == (layer.total.flops / layer.bytes if layer.bytes else None), layer.name
    assert profile(nn.Identity(), X).arithmetic_intensity is None  # nothing moved: no ratio


def test_every_layer_that_does_flops_moves_bytes(big):
    assert [l.name for l in big.layers if l.own.flops and not l.own_bytes] == []


SEQUENTIAL_BYTES = {  # Linear(8, 16), ReLU, Linear(16, 4) on (3, 8): (read, written)
    "0": (F32 * (3 * 8 + 16 * 8 + 16), F32 * 3 * 16),
    "1": (F32 * 3 * 16, F32 * 3 * 16),
    "2": (F32 * (3 * 16 + 4 * 16 + 4), F32 * 3 * 4),
}


@pytest.fixture
def sequential():
    return profile(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.rand(3, 8))


def test_bytes_and_intensity_columns(sequential):
    header, body = github_cells(sequential.table(columns="layer,flops,bytes,intensity", units="exact", tablefmt="github"))
    assert header == ["Layer", "FLOPs", "Bytes", "FLOP/B"]
    shown = {row[0].lstrip("│├└─ "): row for row in body}
    total = sum(r + w for r, w in SEQUENTIAL_BYTES.values())
    expected = {"Sequential": total, "Total": total, **{k: r + w for k, (r, w) in SEQUENTIAL_BYTES.items()}}
    for label, nbytes in expected.items():
        _, flops, shown_bytes, intensity = shown[label]
        assert int(shown_bytes.replace(",", "")) == nbytes, label
        assert float(intensity.replace(",", "")) == round(int(flops.replace(",", "")) / nbytes, 1), label
    human = sequential.table(columns=["layer", "bytes"])
    assert f"{total / 1024:.2f} KiB" in human.splitlines()[-1]


def test_to_dict_carries_bytes(sequential):
    report = json.loads(json.dumps(sequential.to_dict()))
    read = sum(r for r, _ in SEQUENTIAL_BYTES.values())
    written = sum(w for _, w in SEQUENTIAL_BYTES.values())
    assert (report["totals"]["bytes_read"], report["totals"]["bytes_written"]) == (read, written)
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert (layers[""]["bytes_read"], layers[""]["own_bytes_read"], layers[""]["own_bytes_written"]) == (read, 0, 0)
    for name, (r, w) in SEQUENTIAL_BYTES.items():
        fields = ("bytes_read", "bytes_written", "own_bytes_read", "own_bytes_written")
        assert tuple(layers[name][f] for f in fields) == (r, w, r, w), name


def test_an_embedding_bag_reads_a_row_per_index():
    bag = nn.EmbeddingBag(100, 64)
    indices = torch.randint(0, 100, (1, 1000), generator=torch.Generator().manual_seed(0))
    assert moved(bag, indices) == (I64 * 1000 + F32 * 1000 * 64, F32 * 1 * 64)
    offsets = torch.tensor([0, 400])
    assert moved(Call(lambda i, w, o: F.embedding_bag(i, w, o)), indices[0], bag.weight, offsets) == (
        I64 * 1000 + I64 * 2 + F32 * 1000 * 64, F32 * 2 * 64)


@pytest.mark.filterwarnings("ignore::UserWarning")  # quantized tensor creation is deprecated in torch 2.14
def test_a_quantized_linear_reads_its_packed_int8_weight():
    dynamic = torch.ao.nn.quantized.dynamic.Linear(256, 128)
    assert moved(dynamic, torch.rand(2, 256)) == (F32 * 2 * 256 + 1 * 128 * 256 + F32 * 128, F32 * 2 * 128)


W = torch.rand(16, 8)


@pytest.mark.parametrize(("fn", "read", "written"), [
    pytest.param(lambda r: F.linear(r, W), F32 * (5 * 8 + 16 * 8), F32 * 5 * 16, id="a batched input, a weight"),
    pytest.param(lambda r: torch.cat([r, r]), F32 * 5 * 8, F32 * 5 * 2 * 8, id="a copy"),
])
def test_under_vmap_a_tensor_is_the_batch_it_stands_for(fn, read, written):
    assert moved(Call(lambda x: torch.vmap(fn)(x)), torch.rand(5, 8)) == (read, written)


VECTOR, TEN = torch.rand(1000), torch.arange(10)


@pytest.mark.parametrize(("fn", "inputs", "read", "written"), [
    # each clones first (read and write the whole vector), then scatters into the clone
    pytest.param(lambda y: y.clone().__setitem__(slice(0, 10), 0.0), (VECTOR,), F32 * 1000, F32 * (1000 + 10),
                 id="x[0:10] = 0."),
    pytest.param(lambda y, i: y.clone().scatter_(0, i, 2.0), (VECTOR, TEN), F32 * 1000 + I64 * 10,
                 F32 * (1000 + 10), id="scatter_ of a scalar"),
    pytest.param(lambda y, i, v: y.clone().index_put_((i,), v, accumulate=True), (VECTOR, TEN, torch.rand(10)),
                 F32 * 1000 + I64 * 10 + F32 * 10 + F32 * 10, F32 * (1000 + 10), id="index_put_ accumulating"),
    pytest.param(lambda y, i, v: y.clone().index_put_((i,), v), (VECTOR.long(), TEN, TEN.clone()),
                 I64 * 1000 + I64 * 10 + I64 * 10, I64 * (1000 + 10), id="index_put_ of integers"),
    # several outputs, out=, integer work
    pytest.param(lambda y: torch.topk(y, 5), (VECTOR,), F32 * 1000, F32 * 5 + I64 * 5, id="topk"),
    pytest.param(lambda y: torch.sort(y), (VECTOR,), F32 * 1000, F32 * 1000 + I64 * 1000, id="sort"),
    pytest.param(lambda y, c: torch.cat([y, y], out=c), (VECTOR, torch.empty(2000)), F32 * 1000, F32 * 2000,
                 id="cat into out="),
    pytest.param(lambda y, c: torch.add(y, y, out=c), (VECTOR, torch.empty(1000)), F32 * 1000, F32 * 1000,
                 id="add into out="),
    pytest.param(lambda y: y.long() + 1, (VECTOR,), F32 * 1000 + I64 * 1000, I64 * 1000 * 2,
                 id="a cast, then integer arithmetic"),
])
def test_scatters_several_outputs_out_and_integers(fn, inputs, read, written):
    assert moved(Call(fn), *inputs) == (read, written)


def test_a_boolean_mask_scatter_writes_the_selected_elements():
    y = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    selected = int((y > 0.5).sum())

    def masked(t):
        t = t.clone()
        t[t > 0.5] = 1.0
        return t

    read, written = moved(Call(masked), y)
    # clone 1000 floats; compare: 1000 floats in, 1000 bools out; scatter: reads the mask, writes the selection
    assert (read, written) == (F32 * 1000 + F32 * 1000 + 1 * 1000, F32 * 1000 + 1 * 1000 + F32 * selected)
