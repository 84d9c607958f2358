"""Tests of the Torch7 .t7 reader and the char-rnn checkpoint converter (util/torch7.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from t7_graphs import BUILDERS, NNGraph, array_part, build_rnn, char_rnn_step, log_softmax, sigmoid
from t7_writer import TensorView, write_t7
from util.torch7 import TableKey, TorchObject, _tokens, load_char_rnn_checkpoint, read_t7


# char-rnn's loader caches (vocab.t7, data.t7): read here only to check the reader on real files.
def load_char_rnn_vocab(path: str | Path) -> list[str]:
    """char-rnn's vocab.t7 loader cache as a token list: our index k is char-rnn's k+1."""
    return _tokens(read_t7(path), path)


def load_char_rnn_data(path: str | Path) -> np.ndarray:
    """char-rnn's data.t7 loader cache (a ByteTensor of 1-based vocabulary indices) as a uint8
    array of our 0-based token indices."""
    data = read_t7(path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1
            and (data.size == 0 or data.min() >= 1)):
        raise ValueError(f"{path} is not a char-rnn data.t7 (a ByteTensor of indices from 1)")
    return data - 1


FIXTURES = Path(__file__).parent / "fixtures" / "t7"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "t7"  # ../shared/t7 from the repo root


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


# --- the reader on python-torchfile's fixtures (8-byte longs) ---------------------------------

def test_double_tensor():
    tensor = read_t7(FIXTURES / "doubletensor.t7")
    assert tensor.dtype == np.float64
    np.testing.assert_array_equal(tensor, [[1, 2, 3], [4, 5, 6.9]])


def test_float_tensor():
    tensor = read_t7(FIXTURES / "floattensor.t7")
    assert tensor.dtype == np.float32 and tensor.shape == (2, 3, 4) and tensor.flags.c_contiguous
    np.testing.assert_allclose([tensor[0, 0, 0], tensor[1, 2, 3]], [0.8635312, 0.13664843], rtol=1e-6)


def test_list_table():
    assert read_t7(FIXTURES / "list_table.t7") == {1: "hello", 2: "world", 3: "third item", 4: 123}


def test_nngraph_node():
    node = read_t7(FIXTURES / "nngraph_node.t7")
    assert isinstance(node, TorchObject) and node.typename == "nngraph.Node"
    assert node.attrs["data"]["annotations"]["hello"] == 123
    assert node.attrs["children"] == {} and node.attrs["marked"] is False


def test_gmodule_graph_keeps_identity_and_cycles():
    gmodule = read_t7(FIXTURES / "gmodule_with_linear_identity.t7")
    assert gmodule.typename == "nn.gModule"
    nodes = array_part(gmodule.attrs["forwardnodes"])
    assert gmodule.attrs["innode"] is nodes[0]
    # Every child is one of the forward nodes themselves, not a copy, and nodes are table keys.
    for node in nodes:
        for child in array_part(node.attrs["children"]):
            assert any(child is other for other in nodes)
            assert node.attrs["children"][child] >= 1
    linears = [n.attrs["data"]["module"] for n in nodes
               if "module" in n.attrs["data"] and n.attrs["data"]["module"].typename == "nn.Linear"]
    assert [m.attrs["weight"].shape for m in linears] == [(2, 1)]
    # nngraph's mapindex is keyed by the parents' data tables
    assert any(isinstance(k, TableKey) for n in nodes for k in n.attrs["data"]["mapindex"])


# --- the reader on files written here --------------------------------------------------------

@pytest.mark.parametrize("long_size", [4, 8])
def test_long_sizes(tmp_path, long_size):
    longs = np.array([[1, -2, 3], [2**31 - 1, -(2**31), 0]], np.int64)
    obj = {"longs": longs, "bytes": np.arange(5, dtype=np.uint8), "n": 7, "name": "x"}
    write_t7(tmp_path / "f.t7", obj, long_size=long_size)
    back = read_t7(tmp_path / "f.t7")
    assert back["longs"].dtype == np.int64
    np.testing.assert_array_equal(back["longs"], longs)
    np.testing.assert_array_equal(back["bytes"], np.arange(5))
    assert back["n"] == 7 and back["name"] == "x"


@pytest.mark.parametrize("long_size", [4, 8])
def test_views_share_a_storage(tmp_path, long_size):
    storage = np.arange(20, dtype=np.float32)
    transposed = TensorView(storage, (3, 4), (1, 3), offset=2)  # element [i, j] = storage[2 + i + 3j]
    row = TensorView(storage, (5,), (1,), offset=15)
    broadcast = TensorView(storage, (2, 3), (0, 1), offset=0)
    write_t7(tmp_path / "f.t7", [transposed, row, broadcast, transposed], long_size=long_size)
    back = read_t7(tmp_path / "f.t7")
    expected = np.array([[2 + i + 3 * j for j in range(4)] for i in range(3)])
    np.testing.assert_array_equal(back[1], expected)
    assert back[1].flags.c_contiguous
    np.testing.assert_array_equal(back[2], [15, 16, 17, 18, 19])
    np.testing.assert_array_equal(back[3], [[0, 1, 2], [0, 1, 2]])
    assert back[4] is back[1]


def test_files_from_before_class_versions(tmp_path):
    module = TorchObject("nn.Linear")
    module.attrs = {"weight": np.ones((2, 3)), "bias": np.zeros(2, np.float32)}
    write_t7(tmp_path / "f.t7", module)
    # Old Torch wrote the class name without the "V 1" string in front of it.
    versioned = (tmp_path / "f.t7").read_bytes()
    (tmp_path / "f.t7").write_bytes(versioned.replace(struct.pack("<i", 3) + b"V 1", b""))
    back = read_t7(tmp_path / "f.t7")
    assert back.typename == "nn.Linear"
    np.testing.assert_array_equal(back.attrs["weight"], np.ones((2, 3)))
    assert back.attrs["bias"].dtype == np.float32


def test_empty_tensor(tmp_path):
    write_t7(tmp_path / "f.t7", {"empty": np.zeros(0, np.float64)})
    empty = read_t7(tmp_path / "f.t7")["empty"]
    assert empty.shape == (0,) and empty.dtype == np.float64


@pytest.mark.parametrize("dtype, expected", [
    (np.float32, "torch.CudaTensor"), (np.float64, "torch.CudaDoubleTensor"),
    (np.int64, "torch.CudaLongTensor"), (np.uint8, "torch.CudaByteTensor")])
def test_cuda_tensors(tmp_path, dtype, expected):
    tensor = np.arange(6, dtype=dtype).reshape(2, 3)
    write_t7(tmp_path / "f.t7", tensor, long_size=4, cuda=True)
    assert expected.encode() in (tmp_path / "f.t7").read_bytes()
    back = read_t7(tmp_path / "f.t7")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, tensor)


def test_references_and_cycles(tmp_path):
    shared_table = {"x": 1.5}
    node = TorchObject("graph.Node")
    node.attrs = {"children": {}, "data": shared_table}
    node.attrs["children"][1] = node  # a cycle through a Torch object
    table: dict = {"a": shared_table, "b": shared_table, "node": node, True: False}
    table["self"] = table  # a cycle through a table
    table[TableKey(shared_table)] = 2  # a table used as a key
    write_t7(tmp_path / "f.t7", table)
    back = read_t7(tmp_path / "f.t7")
    assert back["a"] is back["b"] and back["self"] is back
    assert back["node"].attrs["children"][1] is back["node"]
    assert back["node"].attrs["data"] is back["a"]
    assert back[TableKey(back["a"])] == 2 and back[True] is False


def nested_tables(depth: int) -> bytes:
    """{next = {next = ... {}}}, written directly (a recursive writer would overflow first)."""
    key = struct.pack("<ii", 2, 4) + b"next"
    levels = (struct.pack("<iii", 3, i, 1) + key for i in range(1, depth + 1))
    return b"".join(levels) + struct.pack("<iii", 3, depth + 1, 0)


def test_deep_nesting(tmp_path):
    # Python's default recursion limit would stop at a few hundred levels; nngraph graphs of
    # deep models nest one level per node.
    (tmp_path / "f.t7").write_bytes(nested_tables(5000))
    back = read_t7(tmp_path / "f.t7")
    for _ in range(5000):
        back = back["next"]
    assert back == {}
    (tmp_path / "f.t7").write_bytes(nested_tables(60000))
    with pytest.raises(ValueError, match="nested too deeply"):
        read_t7(tmp_path / "f.t7")


lua_keys = st.one_of(st.text(st.characters(max_codepoint=255), max_size=5),
                     st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False))
lua_values = st.recursive(
    st.one_of(st.booleans(), st.floats(allow_nan=False), st.integers(-2**40, 2**40),
              st.text(st.characters(max_codepoint=255), max_size=20)),
    lambda children: st.dictionaries(lua_keys, children, max_size=4) | st.lists(children, max_size=4),
    max_leaves=20)


def lua_view(value: object) -> object:
    """What a value reads back as: lists are tables keyed 1..n, integral number keys are ints."""
    if isinstance(value, list):
        value = dict(enumerate(value, 1))
    if isinstance(value, dict):
        return {int(k) if isinstance(k, float) and k.is_integer() else k: lua_view(v) for k, v in value.items()}
    return value


@settings(max_examples=60, deadline=None)
@given(value=lua_values, long_size=st.sampled_from([4, 8]))
def test_round_trip_plain_values(tmp_path_factory, value, long_size):
    path = tmp_path_factory.mktemp("t7") / "f.t7"
    write_t7(path, value, long_size=long_size)
    assert read_t7(path) == lua_view(value)


@settings(max_examples=40, deadline=None)
@given(array=hnp.arrays(st.sampled_from([np.float64, np.float32, np.int32, np.int16, np.int8, np.uint8]),
                        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)),
       long_size=st.sampled_from([4, 8]))
def test_round_trip_arrays(tmp_path_factory, array, long_size):
    path = tmp_path_factory.mktemp("t7") / "f.t7"
    write_t7(path, array, long_size=long_size)
    back = read_t7(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


# --- bad files --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["floattensor.t7", "gmodule_with_linear_identity.t7", "list_table.t7"])
def test_truncated_files(tmp_path, name):
    data = (FIXTURES / name).read_bytes()
    for cut in sorted({1, 4, 9, len(data) // 3, len(data) // 2, len(data) - 1}):
        (tmp_path / "cut.t7").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable Torch7 file"):
            read_t7(tmp_path / "cut.t7")


def test_not_t7_files(tmp_path):
    for content in [b"", b"hello world, this is plain text\n", bytes(range(256)),
                    (FIXTURES / "list_table.t7").read_bytes() + b"\0"]:
        (tmp_path / "bad.t7").write_bytes(content)
        with pytest.raises(ValueError):
            read_t7(tmp_path / "bad.t7")


def test_functions_are_rejected(tmp_path):
    # {f = <function>}: a table (tag 3, object 1, one pair), key "f", value of tag 6
    (tmp_path / "f.t7").write_bytes(struct.pack("<iiiii", 3, 1, 1, 2, 1) + b"f" + struct.pack("<ii", 6, 2)
                                    + b"\x1bLJ bytecode would follow")
    with pytest.raises(ValueError, match="Lua function"):
        read_t7(tmp_path / "f.t7")


def test_out_of_range_view_is_rejected(tmp_path):
    write_t7(tmp_path / "f.t7", TensorView(np.arange(4.0), (2, 3), (3, 1)))
    with pytest.raises(ValueError):
        read_t7(tmp_path / "f.t7")


# --- char-rnn loader caches -------------------------------------------------------------------

def test_vocab_fixtures():
    tokens = load_char_rnn_vocab(FIXTURES / "stock_vocab.t7")
    assert tokens == list("0123456789abcdefghijk")
    tokens = load_char_rnn_vocab(FIXTURES / "tinyshakespeare_vocab.t7")
    assert len(tokens) == 65 and tokens == sorted(tokens) and tokens[0] == "\n" and "z" in tokens


def test_data_cache_written_here(tmp_path):
    write_t7(tmp_path / "data.t7", np.array([1, 3, 2, 3], np.uint8), long_size=4)
    np.testing.assert_array_equal(load_char_rnn_data(tmp_path / "data.t7"), [0, 2, 1, 2])
    with pytest.raises(ValueError, match=r"data\.t7"):
        load_char_rnn_data(FIXTURES / "doubletensor.t7")


@pytest.mark.parametrize("name", ["data_long4.t7", "data_long8.t7"])
def test_tinyshakespeare_data_decodes(name):
    data = load_char_rnn_data(shared(f"tinyshakespeare/{name}"))
    tokens = load_char_rnn_vocab(FIXTURES / "tinyshakespeare_vocab.t7")
    text = SHARED.parent / "data" / "tinyshakespeare.txt"
    if not text.exists():
        pytest.skip(f"{text} is not available")
    token_bytes = np.array([ord(t) for t in tokens], np.uint8)
    assert token_bytes[data].tobytes() == text.read_bytes()


# --- char-rnn checkpoints ---------------------------------------------------------------------

def test_stock_checkpoint():
    checkpoint = load_char_rnn_checkpoint(shared("stock/lm_lstm_epoch18.18_2.2153.t7"))
    assert (checkpoint["model_type"], checkpoint["rnn_size"], checkpoint["num_layers"]) == ("lstm", 128, 2)
    assert checkpoint["tokens"] == list("0123456789abcdefghijk") and checkpoint["encoding"] == "bytes"
    assert checkpoint["iteration"] == 1000 and checkpoint["dropout"] == 0.0
    assert checkpoint["val_loss"] == pytest.approx(2.2153, abs=1e-4)
    assert len(checkpoint["train_losses"]) == 1000 and checkpoint["opt"]["seq_length"] == 50
    shapes = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items()}
    assert shapes == {
        "layers.0.i2h.weight": (512, 21), "layers.0.i2h.bias": (512,),
        "layers.0.h2h.weight": (512, 128), "layers.0.h2h.bias": (512,),
        "layers.1.i2h.weight": (512, 128), "layers.1.i2h.bias": (512,),
        "layers.1.h2h.weight": (512, 128), "layers.1.h2h.bias": (512,),
        "decoder.weight": (21, 128), "decoder.bias": (21,),
    }
    for tensor in checkpoint["state_dict"].values():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous()


def project_step(model: str, sd: dict, token: int, state: list, n: int, H: int) -> tuple[list, np.ndarray]:
    """One time step with this project's equations and parameter names; `token` 0-based."""
    p = {name: t.double().numpy() for name, t in sd.items()}

    def lin(name, v):
        return p[name + ".weight"] @ v + p[name + ".bias"]
    x = np.eye(p["layers.0.i2h.weight"].shape[1])[token]
    new_state = []
    for layer in range(n):
        prefix = f"layers.{layer}."
        if model == "lstm":
            c, h = state[2 * layer], state[2 * layer + 1]
            gates = lin(prefix + "i2h", x) + lin(prefix + "h2h", h)
            i, f, o = sigmoid(gates[:H]), sigmoid(gates[H:2 * H]), sigmoid(gates[2 * H:3 * H])
            c = f * c + i * np.tanh(gates[3 * H:])
            x = o * np.tanh(c)
            new_state += [c, x]
        elif model == "gru":
            h = state[layer]
            gx, gh = lin(prefix + "i2h", x), lin(prefix + "h2h", h)
            z, r = sigmoid(gx[:H] + gh[:H]), sigmoid(gx[H:2 * H] + gh[H:])
            candidate = np.tanh(gx[2 * H:] + lin(prefix + "h2h_candidate", r * h))
            x = z * candidate + (1 - z) * h
            new_state.append(x)
        else:
            x = np.tanh(lin(prefix + "i2h", x) + lin(prefix + "h2h", state[layer]))
            new_state.append(x)
    return new_state, log_softmax(lin("decoder", x))


def stacked(*linears: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The (weight, bias) of one Linear doing the work of several, their rows one after another."""
    return np.concatenate([weight for weight, _ in linears]), np.concatenate([bias for _, bias in linears])


def expected_state_dict(model: str, w: dict, n: int) -> dict:
    """The state_dict the converter must make of the Linears `w` (by role) of a char-rnn model."""
    expected = {"decoder": w["decoder"]}
    for L in range(1, n + 1):
        if model == "gru":
            expected[f"layers.{L - 1}.i2h"] = stacked(w[L, "zx"], w[L, "rx"], w[L, "x"])
            expected[f"layers.{L - 1}.h2h"] = stacked(w[L, "zh"], w[L, "rh"])
            expected[f"layers.{L - 1}.h2h_candidate"] = w[L, "h"]
        else:
            expected[f"layers.{L - 1}.i2h"], expected[f"layers.{L - 1}.h2h"] = w[L, "i2h"], w[L, "h2h"]
    return {f"{name}.{part}": value for name, (weight, bias) in expected.items()
            for part, value in (("weight", weight), ("bias", bias))}


TOKENS = ["\n", " ", "a", "\xe9", "\xff"]  # byte-level: 0xe9 and 0xff are single bytes


@pytest.mark.parametrize("model, H, n, p, cuda, long_size", [
    ("lstm", 4, 2, 0.0, False, 8),
    ("lstm", 3, 1, 0.25, True, 4),
    ("gru", 4, 2, 0.5, True, 4),
    ("gru", 5, 3, 0.0, False, 8),  # rnn_size == vocab size
    ("rnn", 5, 2, 0.0, False, 4),
    ("rnn", 3, 3, 0.3, True, 8),
])
def test_hand_made_checkpoint(tmp_path, model, H, n, p, cuda, long_size):
    rng = np.random.default_rng(len(model) * 100 + H * 10 + n)
    g = NNGraph(rng, np.float32 if cuda else np.float64)
    V = len(TOKENS)
    gmodule, w = BUILDERS[model](g, V, H, n, p)
    write_t7(tmp_path / "cp.t7", {
        "protos": {"rnn": gmodule, "criterion": TorchObject("nn.ClassNLLCriterion")},
        "opt": {"model": model, "rnn_size": H, "num_layers": n, "dropout": p, "seq_length": 50,
                "learning_rate": 2e-3, "data_dir": "data/x"},
        "vocab": {t: i for i, t in enumerate(TOKENS, 1)},
        "train_losses": [3.0, 2.5, 2.25], "val_losses": {3: 2.4}, "val_loss": 2.4, "i": 3, "epoch": 0.75,
    }, long_size=long_size, cuda=cuda)

    checkpoint = load_char_rnn_checkpoint(tmp_path / "cp.t7")
    assert (checkpoint["model_type"], checkpoint["rnn_size"], checkpoint["num_layers"]) == (model, H, n)
    assert checkpoint["tokens"] == TOKENS and checkpoint["dropout"] == p
    assert (checkpoint["iteration"], checkpoint["epoch"], checkpoint["val_loss"]) == (3, 0.75, 2.4)
    assert checkpoint["train_losses"] == [3.0, 2.5, 2.25] and checkpoint["val_losses"] == [[3, 2.4]]
    assert checkpoint["opt"]["seq_length"] == 50 and checkpoint["opt"]["learning_rate"] == 2e-3

    state_dict = checkpoint["state_dict"]
    expected = expected_state_dict(model, w, n)
    assert state_dict.keys() == expected.keys()
    for name, value in expected.items():
        assert state_dict[name].dtype == torch.float32 and state_dict[name].is_contiguous()
        np.testing.assert_array_equal(state_dict[name].numpy(), value.astype(np.float32), err_msg=name)

    state = [rng.uniform(-1, 1, H) for _ in range(n * (2 if model == "lstm" else 1))]
    for token in range(V):
        ref_state, ref_logp = char_rnn_step(model, w, token + 1, state, n)
        new_state, logp = project_step(model, state_dict, token, state, n, H)
        np.testing.assert_allclose(logp, ref_logp, atol=1e-5)
        for ours, theirs in zip(new_state, ref_state, strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_linear_without_bias(tmp_path):
    g = NNGraph(np.random.default_rng(1), np.float64)
    gmodule, w = build_rnn(g, len(TOKENS), 4, 1, 0.0)
    g.linears[1].attrs["bias"] = None  # the h2h Linear, as nn.Linear(H, H, false) saves it
    write_t7(tmp_path / "f.t7", {"protos": {"rnn": gmodule}, "vocab": {t: i for i, t in enumerate(TOKENS, 1)},
                                 "opt": {"model": "rnn", "rnn_size": 4, "num_layers": 1}})
    state_dict = load_char_rnn_checkpoint(tmp_path / "f.t7")["state_dict"]
    np.testing.assert_array_equal(state_dict["layers.0.h2h.bias"].numpy(), np.zeros(4))
    np.testing.assert_array_equal(state_dict["layers.0.h2h.weight"].numpy(), w[1, "h2h"][0].astype(np.float32))


def test_not_a_char_rnn_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is not a char-rnn checkpoint"):
        load_char_rnn_checkpoint(FIXTURES / "list_table.t7")
    write_t7(tmp_path / "f.t7", {"protos": {"rnn": TorchObject("nn.Sequential")}, "opt": {}, "vocab": {}})
    with pytest.raises(ValueError, match="is not a char-rnn checkpoint"):
        load_char_rnn_checkpoint(tmp_path / "f.t7")


def test_unexpected_graph_is_rejected(tmp_path):
    g = NNGraph(np.random.default_rng(0), np.float64)
    gmodule, _ = build_rnn(g, len(TOKENS), 4, 2, 0.0)
    write_t7(tmp_path / "f.t7", {"protos": {"rnn": gmodule}, "vocab": {t: i for i, t in enumerate(TOKENS, 1)},
                                 "opt": {"model": "lstm", "rnn_size": 4, "num_layers": 2}})
    with pytest.raises(ValueError, match="lstm graph"):
        load_char_rnn_checkpoint(tmp_path / "f.t7")


@pytest.mark.parametrize("model", ["lstm", "gru", "rnn"])
def test_long_size_and_device_do_not_change_the_conversion(tmp_path, model):
    """One char-rnn checkpoint saved four ways (8- or 4-byte longs, CPU or CUDA tensors) converts to
    the same state_dict and vocabulary."""
    converted = []
    for long_size in (8, 4):
        for cuda in (False, True):
            g = NNGraph(np.random.default_rng(11), np.float32)  # float32: a CudaTensor holds floats
            gmodule, _ = BUILDERS[model](g, len(TOKENS), 4, 2, 0.0)
            path = tmp_path / f"{long_size}{cuda}.t7"
            write_t7(path, {"protos": {"rnn": gmodule}, "vocab": {t: i for i, t in enumerate(TOKENS, 1)},
                            "opt": {"model": model, "rnn_size": 4, "num_layers": 2}}, long_size=long_size, cuda=cuda)
            converted.append(load_char_rnn_checkpoint(path))
    for other in converted[1:]:
        assert other["tokens"] == converted[0]["tokens"] == TOKENS
        assert other["state_dict"].keys() == converted[0]["state_dict"].keys()
        for name, tensor in converted[0]["state_dict"].items():
            assert torch.equal(other["state_dict"][name], tensor), name
