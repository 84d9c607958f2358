"""char-rnn's LSTM layer: one fused product for the four gates, in the order i, f, o, g.

    gates = i2h(x) + h2h(h)
    i, f, o = sigmoid(gates[0:3H]);  g = tanh(gates[3H:4H])
    c' = f * c + i * g
    h' = o * tanh(c')
"""
import torch
from torch import nn


class LSTMLayer(nn.Module):
    state_names = ("h", "c")
    kernel = staticmethod(torch.lstm)  # PyTorch's fused LSTM (oneDNN on CPU, cuDNN on CUDA)

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size, 4 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 4 * hidden_size)

    def initialize(self) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)
        with torch.no_grad():  # remember more at the start of training, as char-rnn does
            self.i2h.bias[self.hidden_size:2 * self.hidden_size] = 1.0

    def step(self, input_gates: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """One time step; input_gates is i2h(x), computed beforehand for all steps at once."""
        h, c = state
        H = self.hidden_size
        gates = input_gates + self.h2h(h)
        i, f, o = torch.sigmoid(gates[:, :3 * H]).chunk(3, dim=1)
        g = torch.tanh(gates[:, 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c

    def kernel_weights(self) -> list[torch.Tensor]:
        """The weights in PyTorch's kernel layout, whose gate order is i, f, g, o."""
        H = self.hidden_size
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        order = order.to(self.h2h.weight.device)
        return [w.index_select(0, order) for w in (self.i2h.weight, self.h2h.weight, self.i2h.bias, self.h2h.bias)]
