"""char-rnn's vanilla RNN layer: h' = tanh(i2h(x) + h2h(h))."""
from typing import Any

import torch
from torch import nn

from model.layer import Layer, LayerState
from model.sequence import apply_in_float32, last_step_gradient


class RNNSequence(torch.autograd.Function):
    """The recurrence of one layer over a whole sequence, time-major, with a hand-written backward:
    pre (T, B, H) the input products without bias, bias (H) both biases, w_hh (H, H). Returns the
    outputs h_1..h_T (T, B, H) and the final h. Two calls per step each way."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, bias: torch.Tensor, w_hh: torch.Tensor,
                h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T, B, H = pre.shape
        hs = pre.new_empty(T + 1, B, H)
        hs[0] = h0
        torch.add(pre, bias, out=hs[1:])  # becomes h_1..h_T in place
        w_t = w_hh.t()
        h_t = hs.unbind(0)
        for t in range(T):
            h_t[t + 1].addmm_(h_t[t], w_t).tanh_()
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_hh, hs)
        return hs[1:], hs[T]

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_hT: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        w_hh, hs = ctx.saved_tensors
        T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        d_pre = torch.mul(hs[1:], hs[1:]).neg_().add_(1)  # tanh's derivative, then in place d_pre
        d_pre_t = d_pre.unbind(0)
        d_out_t, dh = last_step_gradient(d_out, d_hT, hs)
        for t in range(T - 1, -1, -1):
            d_pre_t[t].mul_(dh)
            if t > 0 and d_out_t is not None:
                dh = torch.addmm(d_out_t[t - 1], d_pre_t[t], w_hh)
            else:
                dh = torch.mm(d_pre_t[t], w_hh)
        d_w = None
        if ctx.needs_input_grad[2]:
            d_w = torch.mm(d_pre.view(T * B, H).t(), hs[:-1].reshape(T * B, H))
        d_bias = d_pre.view(T * B, H).sum(0) if ctx.needs_input_grad[1] else None
        return d_pre, d_bias, d_w, dh


class RNNLayer(Layer):
    state_names = ("h",)
    kernel = staticmethod(torch.rnn_tanh)  # PyTorch's fused tanh RNN, the same equation
    # On the CPU torch.rnn_tanh is no fused kernel (oneDNN serves only the LSTM): it steps through
    # time recording autograd nodes, and RNNSequence trains faster there, so the kernel is used on
    # GPUs only. Measured with bench/train_speed.py; figures in bench/README.md (Model paths).
    kernel_on_cpu = False
    cudnn_mode = "RNN_TANH"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.i2h = nn.Linear(input_size, hidden_size)
        self.h2h = nn.Linear(hidden_size, hidden_size)

    def step(self, input_sum: torch.Tensor, state: LayerState) -> LayerState:
        """One time step; input_sum is i2h(x), computed beforehand for all steps at once."""
        (h,) = state
        return (torch.tanh(input_sum + self.h2h(h)),)

    def sequence(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """The layer over a whole sequence: x (T, B) token ids (the input is their one-hot) or
        (T, B, input_size) -> outputs (T, B, H) and the final (h,)."""
        pre = self.input_product(x)
        out, h = apply_in_float32(RNNSequence, pre, self.i2h.bias + self.h2h.bias, self.h2h.weight, *state)
        return out, (h,)
