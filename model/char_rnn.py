"""The character model: one-hot input, a stack of recurrent layers, a Linear decoder.

The input of layer 1 is the one-hot of the token times i2h's weight, which is the same as picking
the token's column of that weight (a gather). Dropout acts on the inputs of layers 2..n and on the
top h before the decoder, never on the recurrent state. `forward` returns logits; log_softmax is
applied by the loss and the sampler.

`forward_steps` is char-rnn's graph step by step, the reference. `forward` gives the same numbers
faster (tests/test_model.py compares outputs, state and gradients of every path); which path it
takes depends on the cell, the device and the vocabulary size V:

    cell  device     V <= KERNEL_ONE_HOT_LIMIT              V > KERNEL_ONE_HOT_LIMIT
    lstm  CPU        kernel on all layers, one-hot input    layer 1 `sequence`, kernel on layers 2..n
    lstm  CUDA/MPS   kernel on all layers, one-hot input    kernel on all layers, one-hot input
    rnn   CPU        every layer as its `sequence`          every layer as its `sequence`
    rnn   CUDA/MPS   kernel on all layers, one-hot input    kernel on all layers, one-hot input
    gru   CPU        every layer as its `sequence`          every layer as its `sequence`
    gru   CUDA/MPS   every layer as its `sequence`          every layer as its `sequence`
    sampling (`step`, Stepper), every cell, device and V: each layer's `step`, one character at a time
    on CUDA/MPS a model with dropout calls the kernel once per layer, self.dropout between (kernel_per_layer)

kernel: the cell's fused multi-layer PyTorch function (Layer.kernel: torch.lstm, torch.rnn_tanh),
one call for the layers named, taking the layers' parameters as they are (the LSTM keeps its gates
in the kernels' order, model/lstm.py); on CUDA they live in one buffer per call, laid out as cuDNN
reads it (share_cudnn_buffer), so cuDNN neither copies them at each call nor warns that they are
"not part of single contiguous chunk of memory". `sequence`: the layer's hand-written autograd Function over the
whole sequence; layer 1's takes the gathered columns of i2h for its one-hot product. GRU has no
kernel (nn.GRU computes another candidate), torch.rnn_tanh is no fused kernel on the CPU
(Layer.kernel_on_cpu), and on the CPU above KERNEL_ONE_HOT_LIMIT the one-hot product costs the
kernel more than the gather costs the sequence. A GPU is launch-bound at char-rnn's sizes: there
the sequence's launches per time step (a few, forward and backward: about 700 a step at V 2,583)
cost more than the kernel's one product of the one-hot, so the one-hot goes in at every V (a rule
from the launch counts, not yet timed on a GPU). Under bfloat16 autocast the kernel runs in
bfloat16 on a CPU whose oneDNN has a bfloat16 LSTM, else in float32 (kernel_precision), on GPUs
always in float32: autocast would run cuDNN's RNNs in float16 (it casts them to float16 whatever
its dtype), without the gradient scaler float16 needs.
"""
import contextlib
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.backends.cudnn import rnn as cudnn_rnn

from model.gru import GRULayer
from model.layer import Layer, Layers, LayerState
from model.lstm import GateLinear, LSTMLayer
from model.rnn import RNNLayer

LAYERS: dict[str, type[Layer]] = {"lstm": LSTMLayer, "gru": GRULayer, "rnn": RNNLayer}
State = tuple[torch.Tensor, ...]  # for LSTM (h, c), else (h,); each (num_layers, batch, rnn_size)

# On the CPU, the largest vocabulary whose one-hot goes into the fused kernel as layer 1's input; above it
# layer 1 runs as its `sequence` on gathered columns of i2h (the kernel still runs layers 2..n).
# The kernel's cost grows with the one-hot product (vocabulary x 4H for every character, forward
# and twice backward), the sequence's does not. Chosen from CPU timings of both paths (LSTM
# training steps); the figures are in bench/README.md (Model paths).
KERNEL_ONE_HOT_LIMIT = 128


class CharRNN(nn.Module):
    def __init__(self, model_type: str, vocab_size: int, rnn_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        layer_class = LAYERS[model_type]
        self.model_type, self.vocab_size, self.rnn_size, self.num_layers = model_type, vocab_size, rnn_size, num_layers
        self.layers = Layers(layer_class(vocab_size if n == 0 else rnn_size, rnn_size) for n in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(rnn_size, vocab_size)
        self.use_kernel = layer_class.kernel is not None

    def initialize(self) -> None:
        """char-rnn's initialisation: uniform in [-0.08, 0.08], LSTM forget biases 1."""
        nn.init.uniform_(self.decoder.weight, -0.08, 0.08)
        nn.init.uniform_(self.decoder.bias, -0.08, 0.08)
        for layer in self.layers:
            layer.initialize()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "CharRNN":
        """nn.Module's (.to() and .cuda() go through it), then the weights laid out for cuDNN anew."""
        result = super()._apply(fn, recurse)
        self.share_cudnn_buffer()
        return result

    def share_cudnn_buffer(self) -> None:
        """On CUDA, make the kernel's parameters views of one buffer in cuDNN's layout, as
        nn.LSTM.flatten_parameters does: the parameters keep their identity (an optimizer holds the
        same ones), and cuDNN takes them without a copy. Elsewhere nothing changes."""
        cell = self.layers[0]
        if cell.kernel is None or cell.cudnn_mode is None or not torch._use_cudnn_rnn_flatten_weight():
            return
        weights = cell.kernel_weights(self.layers)
        dtype = weights[0].dtype
        if not all(w.is_cuda and w.dtype == dtype and torch.backends.cudnn.is_acceptable(w) for w in weights):
            return
        mode = cudnn_rnn.get_cudnn_mode(cell.cudnn_mode)
        with torch.no_grad(), torch.cuda.device_of(weights[0]):
            for first, end in self.kernel_calls(0, weights[0].device):  # one buffer per kernel call
                input_size = self.vocab_size if first == 0 else self.rnn_size
                torch._cudnn_rnn_flatten_weight(cell.kernel_weights(self.layers[first:end]), 4, input_size, mode,
                                                self.rnn_size, 0, end - first, False, False)

    def swapped_rows(self) -> list[bool]:
        """For each of self.parameters() (the order of an optimizer's state), whether its rows are
        kept in another order than state_dict() gives: the LSTM's gates, which model.lstm.swap_gates
        turns from either order into the other."""
        swapped = {id(p) for module in self.modules() if isinstance(module, GateLinear) for p in module.parameters()}
        return [id(p) in swapped for p in self.parameters()]

    def shape(self) -> dict:
        return {"model_type": self.model_type, "vocab_size": self.vocab_size, "rnn_size": self.rnn_size,
                "num_layers": self.num_layers, "dropout": self.dropout.p}

    def zero_state(self, batch_size: int) -> State:
        weight = self.decoder.weight
        return tuple(weight.new_zeros(self.num_layers, batch_size, self.rnn_size)
                     for _ in self.layers[0].state_names)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Layer 1's input product for token indices: the token's column of i2h, plus the bias."""
        i2h = self.layers[0].i2h
        return F.embedding(tokens, i2h.weight.t()) + i2h.bias

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x: (batch, time) token indices -> logits (batch, time, vocab) and the final state.

        The layers run time-major (the kernels' own layout, and each step's rows contiguous); only
        the top h is turned back to batch-major, before the decoder, so that the logits come out
        contiguous in (batch, time) order."""
        top, state = self._run(x.t(), state)
        return self.decoder(self.dropout(top.transpose(0, 1))), state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One character per stream (sampling): tokens (batch,) -> logits (batch, vocab).

        forward_steps' arithmetic for one time step (layer 1's one-hot product as a gather), with
        no time axis: at batch 1 a step costs about as much per PyTorch call as per product, so it
        makes as few calls as it can (no one-hot, no transposes, no dropout outside training)."""
        layer_input, new_state = tokens, []
        for n, layer in enumerate(self.layers):
            sums = self.embed(layer_input) if n == 0 else layer.i2h(self._drop(layer_input))
            layer_state = layer.step(sums, tuple(part[n] for part in state))
            layer_input = layer_state[0]
            new_state.append(layer_state)
        return self.decoder(self._drop(layer_input)), stack_layers(new_state)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """self.dropout, skipped outside training where it is the identity (one call less per layer)."""
        return self.dropout(x) if self.training else x

    def forward_steps(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The plain per-step graph of char-rnn, one-hot input included: the reference that the
        faster paths above must reproduce."""
        tops = []
        for t in range(x.shape[1]):
            layer_input = F.one_hot(x[:, t], self.vocab_size).to(self.decoder.weight.dtype)
            new_state = []
            for n, layer in enumerate(self.layers):
                if n > 0:
                    layer_input = self.dropout(layer_input)
                layer_state = layer.step(layer.i2h(layer_input), tuple(part[n] for part in state))
                layer_input = layer_state[0]
                new_state.append(layer_state)
            state = stack_layers(new_state)
            tops.append(layer_input)
        return self.decoder(self.dropout(torch.stack(tops, dim=1))), state

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (time, batch) -> the top layer's h for every step (time, batch, H) and the final state,
        by the path of the module docstring's table."""
        first = self.layers[0]
        use_kernel = self.use_kernel and (x.device.type != "cpu" or first.kernel_on_cpu)
        if use_kernel and one_hot_into_kernel(x.device, self.vocab_size):
            one_hot = x.new_zeros(*x.shape, self.vocab_size, dtype=self.decoder.weight.dtype)
            return self._kernel(one_hot.scatter_(2, x.unsqueeze(2), 1.0), state, 0)
        layer_input, layer_state = first.sequence(x, tuple(part[0] for part in state))
        if self.num_layers > 1 and use_kernel:
            layer_input, kernel_state = self._kernel(self.dropout(layer_input), state, 1)
            return layer_input, tuple(torch.cat([a.unsqueeze(0), b])
                                      for a, b in zip(layer_state, kernel_state, strict=True))
        states = [layer_state]
        for n in range(1, self.num_layers):
            layer_input, layer_state = self.layers[n].sequence(self.dropout(layer_input),
                                                               tuple(part[n] for part in state))
            states.append(layer_state)
        return layer_input, stack_layers(states)

    def _kernel(self, layer_input: torch.Tensor, state: State, first: int) -> tuple[torch.Tensor, State]:
        """PyTorch's fused kernel on layers first.., time-major: one call for them all, or one per
        layer with self.dropout between where the kernel's own dropout would not come from torch's
        generators (kernel_per_layer)."""
        calls = self.kernel_calls(first, layer_input.device)
        if len(calls) == 1:
            return self._kernel_call(layer_input, state, first, self.num_layers)
        states = []
        for n, end in calls:
            layer_input, layer_state = self._kernel_call(self.dropout(layer_input) if n > first else layer_input,
                                                         state, n, end)
            states.append(layer_state)
        return layer_input, tuple(torch.cat(parts) for parts in zip(*states, strict=True))

    def kernel_calls(self, first: int, device: torch.device) -> list[tuple[int, int]]:
        """The layers (first, end) of each kernel call for layers first.. on `device`: all in one
        call, or one per call where kernel_per_layer. _kernel calls them so and share_cudnn_buffer
        lays out one cuDNN buffer for each."""
        if self.kernel_per_layer(device):
            return [(n, n + 1) for n in range(first, self.num_layers)]
        return [(first, self.num_layers)]

    def _kernel_call(self, layer_input: torch.Tensor, state: State, first: int,
                     end: int) -> tuple[torch.Tensor, State]:
        """One call of the kernel on layers first..end-1."""
        cell = self.layers[0]  # all layers share the cell's kernel
        assert cell.kernel is not None, "_run takes the kernel path only for a cell that has a kernel"
        layers = self.layers[first:end]
        # cuDNN takes no strided state ("rnn: hx is not contiguous"), such as a process's rows of a
        # batch under torchrun; for a contiguous state this is the same tensor
        hidden = tuple(part[first:end].contiguous() for part in state)
        # the kernel's dropout acts between its layers only; for one layer none is asked for, so that
        # cuDNN sets up no dropout state (whose seed is a draw, with a sync, from the CUDA generator)
        dropout = self.dropout.p if len(layers) > 1 else 0.0
        with kernel_precision(layer_input.device):
            result = cell.kernel(layer_input, hidden if len(hidden) > 1 else hidden[0], cell.kernel_weights(layers),
                                 has_biases=True, num_layers=len(layers), dropout=dropout, train=self.training,
                                 bidirectional=False, batch_first=False)
        return result[0], tuple(part.float() for part in result[1:])  # the state stays float32 under autocast

    def kernel_per_layer(self, device: torch.device) -> bool:
        """Whether the kernel runs one layer per call on `device`: off the CPU, for a model with
        dropout. cuDNN draws its dropout masks from a random state of its own, seeded from the CUDA
        generator but advanced apart from it, which no checkpoint holds (a resumed run would draw
        other masks); the CPU's kernel draws them from torch's generator, as self.dropout does. In
        evaluation too, so that each layer's weights keep the one cuDNN buffer of their own that
        share_cudnn_buffer lays out."""
        return device.type != "cpu" and self.dropout.p > 0


def one_hot_into_kernel(device: torch.device, vocab_size: int) -> bool:
    """Whether layer 1 goes into the kernel with the one-hot (the module docstring's table)."""
    return device.type != "cpu" or vocab_size <= KERNEL_ONE_HOT_LIMIT


def parameter_count(model_type: str, vocab_size: int, rnn_size: int, num_layers: int) -> int:
    """The number of parameters of that CharRNN, from models of one and two layers built on the meta
    device: no memory, and no time for a stack of millions. A size whose weights 64 bits cannot
    count in bytes raises OverflowError."""
    def count(layers: int) -> int:
        try:
            with torch.device("meta"):
                return sum(p.numel() for p in CharRNN(model_type, vocab_size, rnn_size, layers).parameters())
        except (RuntimeError, TypeError, ValueError):  # past 64 bits: numel overflow, or a size torch cannot take
            raise OverflowError(f"a {model_type} of size {rnn_size} over {vocab_size} tokens") from None

    one = count(1)
    return one if num_layers == 1 else one + (num_layers - 1) * (count(2) - one)


def kernel_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Where the fused kernel runs under autocast: in float32, the rest of the model in bfloat16, on
    a GPU (autocast would cast cuDNN's RNN to float16, with no gradient scaler; cuDNN has bfloat16
    RNNs only from 9.13) and on a CPU whose oneDNN has no bfloat16 LSTM (it needs AVX-512; elsewhere
    it raises "could not create a primitive descriptor"); as autocast says on other CPUs."""
    if torch.is_autocast_enabled(device.type) and (device.type != "cpu" or not cpu_lstm_takes_bfloat16()):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@functools.cache
def cpu_lstm_takes_bfloat16() -> bool:
    """Whether this CPU's oneDNN runs PyTorch's fused LSTM under bfloat16 autocast (asked once, of
    zeros: no random numbers are drawn, so a run's stay the same)."""
    weights = [torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4), torch.zeros(4)]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.lstm(torch.zeros(1, 1, 1), (torch.zeros(1, 1, 1), torch.zeros(1, 1, 1)), weights, has_biases=True,
                       num_layers=1, dropout=0.0, train=False, bidirectional=False, batch_first=False)
    except RuntimeError:
        return False
    return True


class Stepper:
    """CharRNN.step's arithmetic for generation, in fewer calls per character: layer 1's input
    product comes from a table made once (i2h's columns plus its bias: the numbers the gather and
    the addition give), and the state stays a list of each layer's own parts (no stacking, no
    picking a layer's rows). For a model in eval mode whose weights do not change meanwhile."""

    def __init__(self, model: CharRNN):
        first = model.layers[0].i2h
        self.model, self.vocab_size = model, model.vocab_size
        self.table = (first.weight.t() + first.bias).contiguous()

    def zero_state(self, batch_size: int) -> list[LayerState]:
        return [tuple(part[n] for part in self.model.zero_state(batch_size)) for n in range(self.model.num_layers)]

    def step(self, tokens: torch.Tensor, state: list[LayerState]) -> tuple[torch.Tensor, list[LayerState]]:
        """tokens (batch,) -> logits (batch, vocab) and the new state, one list entry per layer."""
        layer_input, new_state = tokens, []
        for n, layer in enumerate(self.model.layers):
            sums = self.table.index_select(0, layer_input) if n == 0 else layer.i2h(layer_input)
            layer_state = layer.step(sums, state[n])
            layer_input = layer_state[0]
            new_state.append(layer_state)
        return self.model.decoder(layer_input), new_state


def stack_layers(layer_states: list[LayerState]) -> State:
    """Each layer's state (parts (batch, H)) -> the model's state (parts (num_layers, batch, H))."""
    return tuple(torch.stack(parts) for parts in zip(*layer_states, strict=True))
