"""What CharRNN needs from a recurrent layer: the interface the cells of model/lstm.py, gru.py and
rnn.py implement, and the list that holds them."""
import abc
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, ClassVar, overload

import torch
import torch.nn.functional as F
from torch import nn

from model.sequence import gather_columns

LayerState = tuple[torch.Tensor, ...]  # one layer's state, h first; each part (batch, hidden_size)
# PyTorch's fused multi-layer function of a cell, called as
#   kernel(input, hx, params, has_biases=, num_layers=, dropout=, train=, bidirectional=, batch_first=)
# -> (outputs, *final state parts), the state parts stacked over the layers.
Kernel = Callable[..., tuple[torch.Tensor, ...]]


class Layer(nn.Module, abc.ABC):
    """One recurrent layer of char-rnn. The members CharRNN uses:

    __init__(input_size, hidden_size)
        input_size is the vocabulary for layer 1 (its input is a one-hot), else the layer below's size.
    state_names
        the names of the parts of the layer's state, h first: h is the layer's output and the next
        layer's input. ("h", "c") for the LSTM, ("h",) for the others.
    i2h, h2h
        char-rnn's Linears of the input x and of the previous h, every gate's rows in one product, in
        the cell's gate order. Layer 1's i2h(x) is a column of i2h.weight plus the bias.
    initialize()
        char-rnn's initialisation of the layer's parameters.
    step(input_product, state) -> the new state
        one time step of the cell's equations; input_product is i2h(x) (batch, rows of i2h),
        computed beforehand, for all steps at once where there are several.
    sequence(x, state) -> (outputs, final state)
        the layer over a whole time-major sequence, x (T, B) token ids (the input is their one-hot)
        or (T, B, input_size); outputs are the h of every step (T, B, hidden_size). The same numbers
        as `step` in a loop, computed by a hand-written autograd Function.
    kernel, kernel_on_cpu, cudnn_mode
        the cell's fused multi-layer PyTorch function (see Kernel), or None where PyTorch has none of
        the same equations; whether CharRNN uses it on the CPU as well as on GPUs; and the kernel's
        name for cuDNN ("LSTM", "RNN_TANH"), which lays out the weights of a stack in one buffer.
    kernel_weights(layers)
        the kernel's `params` for a stack of layers of this cell: the parameters themselves, in the
        kernel's layout (used only where kernel is not None).
    input_product(x)
        shared by the cells' `sequence`: i2h's product without the bias for a whole sequence.
    """

    state_names: ClassVar[tuple[str, ...]]
    kernel: Kernel | None = None
    kernel_on_cpu: ClassVar[bool] = False
    cudnn_mode: ClassVar[str | None] = None
    i2h: nn.Linear
    h2h: nn.Linear

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size

    def initialize(self) -> None:
        """Every parameter uniform in [-0.08, 0.08], as char-rnn does."""
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)

    @abc.abstractmethod
    def step(self, input_product: torch.Tensor, state: LayerState) -> LayerState:
        ...

    @abc.abstractmethod
    def sequence(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        ...

    @staticmethod
    def kernel_weights(layers: Iterable["Layer"]) -> list[torch.Tensor]:
        """Four parameters per layer, weight_ih, weight_hh, bias_ih, bias_hh: i2h's and h2h's, which
        every cell with a kernel keeps in the kernel's gate order."""
        return [w for layer in layers for w in (layer.i2h.weight, layer.h2h.weight, layer.i2h.bias, layer.h2h.bias)]

    def input_product(self, x: torch.Tensor) -> torch.Tensor:
        """i2h's product without the bias for a whole sequence, (T, B, rows of i2h): for token ids
        (T, B) the columns of i2h.weight that their one-hot would pick."""
        w = self.i2h.weight
        return gather_columns(w, x) if x.dim() == 2 else F.linear(x, w)


class Layers(nn.ModuleList):
    """An nn.ModuleList of Layers (the same module at run time and in the state_dict), typed as such."""

    if TYPE_CHECKING:
        @overload
        def __getitem__(self, idx: slice) -> "Layers": ...

        @overload
        def __getitem__(self, idx: int) -> Layer: ...

        def __getitem__(self, idx: int | slice) -> "Layer | Layers": ...

        def __iter__(self) -> Iterator[Layer]: ...
