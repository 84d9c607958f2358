"""The character model: one-hot input, a stack of recurrent layers, a Linear decoder.

The input of layer 1 is the one-hot of the token times i2h's weight, which is the same as picking
the token's column of that weight (a gather). Dropout acts on the inputs of layers 2..n and on the
top h before the decoder, never on the recurrent state. `forward` returns logits; log_softmax is
applied by the loss and the sampler.

`forward_steps` is char-rnn's graph step by step, the reference. `forward` gives the same numbers
faster (tests/test_model.py compares outputs, state and gradients of every path):
- LSTM (and RNN on GPUs): PyTorch's fused kernel. Layer 1 takes the one-hot as its input up to
  KERNEL_ONE_HOT_LIMIT tokens; for larger vocabularies it runs as its layer's `sequence` on
  gathered columns of i2h, and the kernel runs layers 2..n.
- GRU (nn.GRU computes another candidate) and RNN on the CPU (where torch.rnn_tanh is no fused
  kernel): each layer as its `sequence`, a hand-written autograd Function over the whole sequence.
`step` is the sampler's one-character step.
"""
import torch
import torch.nn.functional as F
from torch import nn

from model.gru import GRULayer
from model.lstm import LSTMLayer, kernel_order
from model.rnn import RNNLayer

LAYERS = {"lstm": LSTMLayer, "gru": GRULayer, "rnn": RNNLayer}
State = tuple[torch.Tensor, ...]  # for LSTM (h, c), else (h,); each (num_layers, batch, rnn_size)

# The largest vocabulary whose one-hot goes into the fused kernel as layer 1's input; above it
# layer 1 runs as its `sequence` on gathered columns of i2h (the kernel still runs layers 2..n).
# Measured on the CPU (2 cores, torch 2.13, oneDNN; LSTM training steps, 2 layers, batch 50 x 50,
# both paths timed in turns): the kernel was faster by 3-8% at vocabulary 65 (H 128, 256, 512) and
# by 4% at 128 with H 512; the two were even at 128 with H 256, at 256 with H 128 and 512 and at
# 384 with H 512; the sequence was faster at 192 and 256 with H 256 (5%, 9%), at 384 and 512 with
# H 128 (24%, 40%) and at 768 with H 512 (11%). The kernel's cost grows with the one-hot product
# (vocabulary x 4H for every character, forward and twice backward), the sequence's does not.
KERNEL_ONE_HOT_LIMIT = 128


class CharRNN(nn.Module):
    def __init__(self, model_type: str, vocab_size: int, rnn_size: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        layer_class = LAYERS[model_type]
        self.model_type, self.vocab_size, self.rnn_size, self.num_layers = model_type, vocab_size, rnn_size, num_layers
        self.layers = nn.ModuleList(
            layer_class(vocab_size if n == 0 else rnn_size, rnn_size) for n in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(rnn_size, vocab_size)
        self.use_kernel = layer_class.kernel is not None

    def initialize(self) -> None:
        """char-rnn's initialisation: uniform in [-0.08, 0.08], LSTM forget biases 1."""
        nn.init.uniform_(self.decoder.weight, -0.08, 0.08)
        nn.init.uniform_(self.decoder.bias, -0.08, 0.08)
        for layer in self.layers:
            layer.initialize()

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
        no time axis: at batch 1 a step costs about as much per PyTorch call as per product, and
        this makes a quarter fewer calls than _run_layers on a one-step sequence."""
        layer_input, new_state = None, []
        for n, layer in enumerate(self.layers):
            sums = self.embed(tokens) if n == 0 else layer.i2h(self._drop(layer_input))
            layer_state = layer.step(sums, tuple(part[n] for part in state))
            layer_input = layer_state[0]
            new_state.append(layer_state)
        return self.decoder(self._drop(layer_input)), tuple(torch.stack(parts) for parts in zip(*new_state))

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
            state = tuple(torch.stack(parts) for parts in zip(*new_state))
            tops.append(layer_input)
        return self.decoder(self.dropout(torch.stack(tops, dim=1))), state

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (time, batch) -> the top layer's h for every step (time, batch, H) and the final state.

        Layer 1 goes into the fused kernel with one-hot input when the vocabulary is small; else it
        runs as its layer's `sequence` on gathered columns of i2h. The other layers run in the kernel
        where the cell has one, else each as its `sequence`."""
        first = self.layers[0]
        use_kernel = self.use_kernel and (x.device.type != "cpu" or first.kernel_on_cpu)
        if use_kernel and self.vocab_size <= KERNEL_ONE_HOT_LIMIT:
            one_hot = x.new_zeros(*x.shape, self.vocab_size, dtype=self.decoder.weight.dtype)
            return self._kernel(one_hot.scatter_(2, x.unsqueeze(2), 1.0), state, 0)
        layer_input, layer_state = first.sequence(x, tuple(part[0] for part in state))
        states = [layer_state]
        if self.num_layers > 1 and use_kernel:
            layer_input, kernel_state = self._kernel(self.dropout(layer_input), state, 1)
            return layer_input, tuple(torch.cat([a.unsqueeze(0), b]) for a, b in zip(layer_state, kernel_state))
        for n in range(1, self.num_layers):
            layer_input, layer_state = self.layers[n].sequence(self.dropout(layer_input),
                                                               tuple(part[n] for part in state))
            states.append(layer_state)
        return layer_input, tuple(torch.stack(parts) for parts in zip(*states))

    def kernel_weights(self, first: int = 0) -> list[torch.Tensor]:
        """The kernel's weights of layers first.., four per layer: for an LSTM permuted to the kernel's
        gate order all in one autograd node (one call less per layer each way)."""
        if self.model_type == "lstm":
            return kernel_order([w for layer in self.layers[first:] for w in layer.char_rnn_weights()])
        return [w for layer in self.layers[first:] for w in layer.kernel_weights()]

    def _kernel(self, layer_input: torch.Tensor, state: State, first: int) -> tuple[torch.Tensor, State]:
        """PyTorch's fused multi-layer kernel on layers first.., time-major."""
        weights = self.kernel_weights(first)
        hidden = tuple(part[first:] for part in state)
        result = self.layers[0].kernel(layer_input, hidden if len(hidden) > 1 else hidden[0], weights, True,
                                       self.num_layers - first, self.dropout.p, self.training, False, False)
        return result[0], tuple(part.float() for part in result[1:])  # the state stays float32 under autocast
