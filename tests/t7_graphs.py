"""nngraph models as char-rnn's model/{LSTM,GRU,RNN}.lua build them, for writing hand-made char-rnn
.t7 checkpoints with t7_writer (tests/test_torch7.py, tests/test_evaluate.py; test_hostile_t7.py and
test_fuzz_t7.py break them), and char-rnn's equations for one time step of them (numpy, float64),
the reference the converted models are checked against.

    g = NNGraph(np.random.default_rng(0), np.float64)
    gmodule, w = BUILDERS["lstm"](g, vocab_size, rnn_size, num_layers, dropout)
    write_t7(path, {"protos": {"rnn": gmodule}, "vocab": ..., "opt": ...})
    state, log_probabilities = char_rnn_step("lstm", w, token, state, num_layers)

or a whole checkpoint at once, as train.lua saves it: write_t7(path, char_rnn_checkpoint("lstm", tokens, 4, 2)).

`w` holds every Linear's (weight, bias) by role: (layer, "i2h"), (layer, "h2h") for LSTM and RNN,
(layer, "zx"), (layer, "zh"), (layer, "rx"), (layer, "rh"), (layer, "x"), (layer, "h") for GRU
(layers from 1, as in Lua), and "decoder".
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from t7_writer import TensorView
from util.torch7 import TableKey, TorchObject


def array_part(table: dict) -> list:
    """The values of a Lua table's keys 1..n (its array part), in order."""
    return [table[i] for i in range(1, 1 + sum(isinstance(k, int) for k in table))]


class NNGraph:
    """Builds the forward graph of an nngraph gModule as char-rnn's model/*.lua do, with each
    Linear's parameters as views of one flat storage (as model_utils.combine_all_parameters
    leaves them)."""

    def __init__(self, rng: np.random.Generator, dtype: type) -> None:
        self.rng, self.dtype = rng, dtype
        self.nodes: list[TorchObject] = []
        self.linears: list[TorchObject] = []

    def node(self, data: dict, *inputs: TorchObject) -> TorchObject:
        data.setdefault("annotations", {})
        data["mapindex"] = {}
        node = TorchObject("nngraph.Node")
        node.attrs = {"data": data, "children": {}, "id": len(self.nodes) + 1}
        for i, parent in enumerate(inputs, 1):
            data["mapindex"][i] = parent.attrs["data"]
            data["mapindex"][TableKey(parent.attrs["data"])] = i
            children = parent.attrs["children"]
            children[len(array_part(children)) + 1] = node
            children[node] = len(array_part(children))
        self.nodes.append(node)
        return node

    def __call__(self, typename: str, *inputs: TorchObject, **fields: object) -> TorchObject:
        module = TorchObject(typename)
        module.attrs = dict(fields)
        return self.node({"module": module}, *inputs)

    def linear(self, n_in: int, n_out: int, x: TorchObject, name: str | None = None) -> tuple:
        weight = self.rng.uniform(-0.5, 0.5, (n_out, n_in)).astype(self.dtype)
        bias = self.rng.uniform(-0.5, 0.5, n_out).astype(self.dtype)
        node = self("nn.Linear", x, weight=weight, bias=bias)
        if name:
            node.attrs["data"]["annotations"]["name"] = name
        self.linears.append(node.attrs["data"]["module"])
        return node, (weight, bias)

    def inputs(self, n: int) -> list[TorchObject]:
        innode = self.node({"input": {}})
        mnode = self.node({"nSplitOutputs": n}, innode)
        return [self("nn.Identity", self.node({"selectindex": i, "input": {}}, mnode)) for i in range(1, n + 1)]

    def split(self, node: TorchObject, n: int) -> list[TorchObject]:
        mnode = self.node({"nSplitOutputs": n}, node)
        return [self.node({"selectindex": i, "input": {}}, mnode) for i in range(1, n + 1)]

    def gmodule(self, outputs: list[TorchObject]) -> TorchObject:
        out_fg = self.node({"input": {}}, *outputs)
        out_bg = TorchObject("nngraph.Node")  # the backward graph's twin shares the data table
        out_bg.attrs = {"data": out_fg.attrs["data"], "children": {}, "id": 1}
        flat = np.concatenate([m.attrs[k].ravel() for m in self.linears for k in ("weight", "bias")])
        offset = 0
        for module in self.linears:
            for key in ("weight", "bias"):
                array = module.attrs[key]
                strides = (array.shape[1], 1) if array.ndim == 2 else (1,)
                module.attrs[key] = TensorView(flat, array.shape, strides, offset)
                offset += array.size
        order = self.rng.permutation(len(self.nodes))  # the converter must not rely on node order
        gmodule = TorchObject("nn.gModule")
        gmodule.attrs = {"forwardnodes": [self.nodes[i] for i in order], "outnode": out_bg,
                         "innode": self.nodes[0], "nInputs": len(outputs)}
        return gmodule


def dropout(g: NNGraph, x: TorchObject, p: float) -> TorchObject:
    """An nn.Dropout node on x, as char-rnn adds one: only when p > 0."""
    return g("nn.Dropout", x, p=p) if p > 0 else x


def build_lstm(g: NNGraph, V: int, H: int, n: int, p: float) -> tuple[TorchObject, dict]:
    """model/LSTM.lua; returns the gModule and the Linears' (weight, bias) by role."""
    inputs, outputs, w = g.inputs(2 * n + 1), [], {}
    for L in range(1, n + 1):
        prev_c, prev_h = inputs[2 * L - 1], inputs[2 * L]
        x = g("OneHot", inputs[0], outputSize=V) if L == 1 else dropout(g, outputs[2 * L - 3], p)
        i2h, w[L, "i2h"] = g.linear(V if L == 1 else H, 4 * H, x, f"i2h_{L}")
        h2h, w[L, "h2h"] = g.linear(H, 4 * H, prev_h, f"h2h_{L}")
        reshaped = g("nn.Reshape", g("nn.CAddTable", i2h, h2h), size=[4, H])
        n1, n2, n3, n4 = g.split(g("nn.SplitTable", reshaped, dimension=2), 4)
        in_gate, forget_gate, out_gate = g("nn.Sigmoid", n1), g("nn.Sigmoid", n2), g("nn.Sigmoid", n3)
        in_transform = g("nn.Tanh", n4)
        next_c = g("nn.CAddTable", g("nn.CMulTable", forget_gate, prev_c), g("nn.CMulTable", in_gate, in_transform))
        next_h = g("nn.CMulTable", out_gate, g("nn.Tanh", next_c))
        outputs += [next_c, next_h]
    proj, w["decoder"] = g.linear(H, V, dropout(g, outputs[-1], p), "decoder")
    return g.gmodule([*outputs, g("nn.LogSoftMax", proj)]), w


def gate_sum(g: NNGraph, w: dict, role: tuple[int, str], size: int, H: int, x: TorchObject,
             prev_h: TorchObject) -> TorchObject:
    """GRU.lua's new_input_sum: Linear(size, H)(x) + Linear(H, H)(prev_h), recorded in `w` as
    role + "x" and role + "h"."""
    layer, name = role
    i2h, w[layer, name + "x"] = g.linear(size, H, x)
    h2h, w[layer, name + "h"] = g.linear(H, H, prev_h)
    return g("nn.CAddTable", i2h, h2h)


def build_gru(g: NNGraph, V: int, H: int, n: int, p: float) -> tuple[TorchObject, dict]:
    """model/GRU.lua (no annotations, as there)."""
    inputs, outputs, w = g.inputs(n + 1), [], {}
    for L in range(1, n + 1):
        prev_h = inputs[L]
        x = g("OneHot", inputs[0], outputSize=V) if L == 1 else dropout(g, outputs[L - 2], p)
        size = V if L == 1 else H
        update_gate = g("nn.Sigmoid", gate_sum(g, w, (L, "z"), size, H, x, prev_h))
        reset_gate = g("nn.Sigmoid", gate_sum(g, w, (L, "r"), size, H, x, prev_h))
        gated_hidden = g("nn.CMulTable", reset_gate, prev_h)
        p2, w[L, "h"] = g.linear(H, H, gated_hidden)
        p1, w[L, "x"] = g.linear(size, H, x)
        hidden_candidate = g("nn.Tanh", g("nn.CAddTable", p1, p2))
        zh = g("nn.CMulTable", update_gate, hidden_candidate)
        one_minus_z = g("nn.AddConstant", g("nn.MulConstant", update_gate, constant_scalar=-1), constant_scalar=1)
        outputs.append(g("nn.CAddTable", zh, g("nn.CMulTable", one_minus_z, prev_h)))
    proj, w["decoder"] = g.linear(H, V, dropout(g, outputs[-1], p))
    return g.gmodule([*outputs, g("nn.LogSoftMax", proj)]), w


def build_rnn(g: NNGraph, V: int, H: int, n: int, p: float) -> tuple[TorchObject, dict]:
    """model/RNN.lua."""
    inputs, outputs, w = g.inputs(n + 1), [], {}
    for L in range(1, n + 1):
        x = g("OneHot", inputs[0], outputSize=V) if L == 1 else dropout(g, outputs[L - 2], p)
        i2h, w[L, "i2h"] = g.linear(V if L == 1 else H, H, x)
        h2h, w[L, "h2h"] = g.linear(H, H, inputs[L])
        outputs.append(g("nn.Tanh", g("nn.CAddTable", i2h, h2h)))
    proj, w["decoder"] = g.linear(H, V, dropout(g, outputs[-1], p))
    return g.gmodule([*outputs, g("nn.LogSoftMax", proj)]), w


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, element-wise."""
    return 1 / (1 + np.exp(-z))


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log(softmax(z)) of a vector, computed stably."""
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def char_rnn_step(model: str, w: dict, token: int, state: list, n: int) -> tuple[list, np.ndarray]:
    """One time step with char-rnn's equations and the Linears by role; `token` 1-based."""
    def lin(key: object, v: np.ndarray) -> np.ndarray:
        weight, bias = w[key]
        return weight.astype(np.float64) @ v + bias
    x = np.eye(w[1, "i2h" if model != "gru" else "zx"][0].shape[1])[token - 1]
    new_state = []
    for L in range(1, n + 1):
        if model == "lstm":
            c, h = state[2 * L - 2], state[2 * L - 1]
            gates = (lin((L, "i2h"), x) + lin((L, "h2h"), h)).reshape(4, -1)
            i, f, o, g = sigmoid(gates[0]), sigmoid(gates[1]), sigmoid(gates[2]), np.tanh(gates[3])
            c = f * c + i * g
            x = o * np.tanh(c)
            new_state += [c, x]
        elif model == "gru":
            h = state[L - 1]
            z = sigmoid(lin((L, "zx"), x) + lin((L, "zh"), h))
            r = sigmoid(lin((L, "rx"), x) + lin((L, "rh"), h))
            candidate = np.tanh(lin((L, "x"), x) + lin((L, "h"), r * h))
            x = z * candidate + (1 - z) * h
            new_state.append(x)
        else:
            x = np.tanh(lin((L, "i2h"), x) + lin((L, "h2h"), state[L - 1]))
            new_state.append(x)
    return new_state, log_softmax(lin("decoder", x))


Builder = Callable[[NNGraph, int, int, int, float], tuple[TorchObject, dict]]
BUILDERS: dict[str, Builder] = {"lstm": build_lstm, "gru": build_gru, "rnn": build_rnn}
"""The builder of each model type: builder(g, vocab_size, rnn_size, num_layers, dropout)."""


def char_rnn_checkpoint(model: str, tokens: list[str], H: int, n: int, p: float = 0.0, seed: int = 0,
                        dtype: type = np.float64) -> dict:
    """A checkpoint as char-rnn's train.lua saves one (protos, opt, vocab, the training history) of
    a `model` of n layers of H units over `tokens`, for write_t7; the weights are drawn from `seed`."""
    gmodule, _ = BUILDERS[model](NNGraph(np.random.default_rng(seed), dtype), len(tokens), H, n, p)
    return {
        "protos": {"rnn": gmodule, "criterion": TorchObject("nn.ClassNLLCriterion")},
        "opt": {"model": model, "rnn_size": H, "num_layers": n, "dropout": p, "seq_length": 50, "batch_size": 50,
                "learning_rate": 2e-3, "data_dir": "data/tinyshakespeare", "savefile": model, "gpuid": 0},
        "vocab": {t: i for i, t in enumerate(tokens, 1)},
        "train_losses": [3.0, 2.5, 2.25], "val_losses": {3: 2.4}, "val_loss": 2.4, "i": 3, "epoch": 0.75,
    }
