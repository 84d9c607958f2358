"""char-rnn's GRU layer (not nn.GRU: the reset gate acts on h before its product).

    z  = sigmoid(W_zx x + W_zh h)
    r  = sigmoid(W_rx x + W_rh h)
    h~ = tanh(W_x x + W_h (r * h))
    h' = z * h~ + (1 - z) * h
Every W is a Linear with bias. The three products of x share one Linear (i2h, rows z, r, h~) and
the two gate products of h another (h2h, rows z, r); h2h_candidate is W_h.
"""
import torch
from torch import nn


class GRULayer(nn.Module):
    state_names = ("h",)
    kernel = None  # nn.GRU's kernel computes a different candidate, so there is none to use

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size, 3 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 2 * hidden_size)
        self.h2h_candidate = nn.Linear(hidden_size, hidden_size)

    def initialize(self) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -0.08, 0.08)

    def step(self, input_sums: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """One time step; input_sums is i2h(x), computed beforehand for all steps at once."""
        (h,) = state
        H = self.hidden_size
        z, r = torch.sigmoid(input_sums[:, :2 * H] + self.h2h(h)).chunk(2, dim=1)
        candidate = torch.tanh(input_sums[:, 2 * H:] + self.h2h_candidate(r * h))
        return (z * candidate + (1 - z) * h,)
