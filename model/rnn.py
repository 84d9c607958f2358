"""char-rnn's vanilla RNN layer: h' = tanh(i2h(x) + h2h(h))."""
import torch
from torch import nn


class RNNLayer(nn.Module):
    state_names = ("h",)
    kernel = staticmethod(torch.rnn_tanh)  # PyTorch's fused tanh RNN, the same equation

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size, hidden_size)
        self.h2h = nn.Linear(hidden_size, hidden_size)

    def initialize(self) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)

    def step(self, input_sum: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """One time step; input_sum is i2h(x), computed beforehand for all steps at once."""
        (h,) = state
        return (torch.tanh(input_sum + self.h2h(h)),)

    def kernel_weights(self) -> list[torch.Tensor]:
        return [self.i2h.weight, self.h2h.weight, self.i2h.bias, self.h2h.bias]
