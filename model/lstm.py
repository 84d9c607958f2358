"""char-rnn's LSTM layer: one fused product for the four gates, in the order i, f, o, g.

    gates = i2h(x) + h2h(h)
    i, f, o = sigmoid(gates[0:3H]);  g = tanh(gates[3H:4H])
    c' = f * c + i * g
    h' = o * tanh(c')
"""
import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from model.layer import Layer, LayerState
from model.sequence import apply_in_float32, last_step_gradient


@functools.cache
def gate_swap(rows: int, device: torch.device) -> torch.Tensor:
    """Row indices that swap the last two gate blocks of a 4H-row tensor: i, f, o, g <-> i, f, g, o."""
    block = rows // 4
    index = torch.arange(rows, device=device)
    return torch.cat([index[:2 * block], index[3 * block:], index[2 * block:3 * block]])


class KernelOrder(torch.autograd.Function):
    """4H-row tensors from char-rnn's gate order i, f, o, g to the kernels' i, f, g, o, in one
    autograd node: one index_select of rows per tensor. The permutation is its own inverse, so the
    backward applies it to the gradients. (Built-in index_selects would cost a node each and a zero
    tensor plus a scatter-add each in the backward; copying all tensors into one buffer and handing
    the kernel views of it was slower; the figures are in bench/README.md, Model paths.)"""

    @staticmethod
    def forward(ctx: Any, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.orders = [gate_swap(t.shape[0], t.device) for t in tensors]
        return tuple(t.index_select(0, order) for t, order in zip(tensors, ctx.orders, strict=True))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        return tuple(None if g is None else g.index_select(0, order)
                     for g, order in zip(grads, ctx.orders, strict=True))


def kernel_order(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors in the kernels' gate order, gradients flowing back to them."""
    return list(KernelOrder.apply(*tensors))


class LSTMSequence(torch.autograd.Function):
    """The recurrence of one layer over a whole sequence, time-major, with a hand-written backward.

    pre (T, B, 4H) holds the input products without bias, bias (4H) both biases, w_hh (4H, H) is
    h2h's weight, all in char-rnn's gate order i, f, o, g. Returns the outputs h_1..h_T (T, B, H)
    and the final h and c. The forward makes 7 calls per step (autograd would record about 15
    nodes), the backward 6; the derivative factors that do not depend on the recurrence are
    computed for all steps at once, and the weight gradient is one product over all T*B rows."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, bias: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor,
                c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T, B, G = pre.shape
        H = G // 4
        gates = torch.add(pre, bias, out=pre.new_empty(T, B, G))  # becomes the activated gates
        hs, cs, tcs = pre.new_empty(T + 1, B, H), pre.new_empty(T + 1, B, H), pre.new_empty(T, B, H)
        hs[0], cs[0] = h0, c0
        w_t = w_hh.t()
        g_t, h_t, c_t, tc_t = gates.unbind(0), hs.unbind(0), cs.unbind(0), tcs.unbind(0)
        ifo_t, i_t, f_t, o_t, cand_t = (part.unbind(0) for part in (gates[:, :, :3 * H], *gates.split(H, dim=2)))
        for t in range(T):
            g_t[t].addmm_(h_t[t], w_t)
            ifo_t[t].sigmoid_()
            cand_t[t].tanh_()
            torch.mul(f_t[t], c_t[t], out=c_t[t + 1]).addcmul_(i_t[t], cand_t[t])
            torch.tanh(c_t[t + 1], out=tc_t[t])
            torch.mul(o_t[t], tc_t[t], out=h_t[t + 1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_hh, gates, hs, cs, tcs)
        return hs[1:], hs[T], cs[T]

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_hT: torch.Tensor | None,
                 d_cT: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        w_hh, gates, hs, cs, tcs = ctx.saved_tensors
        T, B, G = gates.shape
        H = G // 4
        i, f, o, g = gates.split(H, dim=2)
        # the factors of the gate derivatives, for all steps at once:
        #   dc_t = dc_{t+1} * f_{t+1} + dh_t * A;  d(i, f)_pre = dc_t * P_if;  d g_pre = dc_t * P_g;
        #   d o_pre = dh_t * Q
        A = torch.mul(tcs, tcs).neg_().add_(1).mul_(o)
        P_if = gates.new_empty(T, B, 2, H)
        torch.mul(g, torch.rsub(i, 1).mul_(i), out=P_if[:, :, 0])
        torch.mul(cs[:-1], torch.rsub(f, 1).mul_(f), out=P_if[:, :, 1])
        P_g = torch.mul(g, g).neg_().add_(1).mul_(i)
        Q = torch.rsub(o, 1).mul_(o).mul_(tcs)
        d_gates = torch.empty_like(gates)
        d_if_t = d_gates[:, :, :2 * H].view(T, B, 2, H).unbind(0)
        d_o_t, d_g_t, d_all_t = d_gates[:, :, 2 * H:3 * H].unbind(0), d_gates[:, :, 3 * H:].unbind(0), d_gates.unbind(0)
        A_t, P_if_t, P_g_t, Q_t, f_t = A.unbind(0), P_if.unbind(0), P_g.unbind(0), Q.unbind(0), f.unbind(0)
        d_out_t, dh = last_step_gradient(d_out, d_hT, hs)
        dc = d_cT
        for t in range(T - 1, -1, -1):
            dc = dh * A_t[t] if dc is None else torch.addcmul(dc, dh, A_t[t])
            torch.mul(dc.unsqueeze(1), P_if_t[t], out=d_if_t[t])
            torch.mul(dc, P_g_t[t], out=d_g_t[t])
            torch.mul(dh, Q_t[t], out=d_o_t[t])
            dc.mul_(f_t[t])
            if t > 0 and d_out_t is not None:
                dh = torch.addmm(d_out_t[t - 1], d_all_t[t], w_hh)
            else:
                dh = torch.mm(d_all_t[t], w_hh)
        flat = d_gates.view(T * B, G)
        d_w = torch.mm(flat.t(), hs[:-1].reshape(T * B, H)) if ctx.needs_input_grad[2] else None
        d_bias = flat.sum(0) if ctx.needs_input_grad[1] else None
        return d_gates, d_bias, d_w, dh, dc


class LSTMLayer(Layer):
    state_names = ("h", "c")
    kernel = staticmethod(torch.lstm)  # PyTorch's fused LSTM (oneDNN on CPU, cuDNN on CUDA)
    kernel_on_cpu = True

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.i2h = nn.Linear(input_size, 4 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 4 * hidden_size)

    def initialize(self) -> None:
        super().initialize()
        with torch.no_grad():  # remember more at the start of training, as char-rnn does
            self.i2h.bias[self.hidden_size:2 * self.hidden_size] = 1.0

    def step(self, input_gates: torch.Tensor, state: LayerState) -> LayerState:
        """One time step; input_gates is i2h(x), computed beforehand for all steps at once."""
        h, c = state
        H = self.hidden_size
        gates = input_gates + self.h2h(h)
        i, f, o = torch.sigmoid(gates[:, :3 * H]).chunk(3, dim=1)
        g = torch.tanh(gates[:, 3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c

    @classmethod
    def kernel_weights(cls, layers: Iterable[Layer]) -> list[torch.Tensor]:
        """Permuted from char-rnn's gate order to the kernel's, all layers in one autograd node (one
        call less per layer each way)."""
        return kernel_order(super().kernel_weights(layers))

    def sequence(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """The layer over a whole sequence: x (T, B) token ids (the input is their one-hot) or
        (T, B, input_size) -> outputs (T, B, H) and the final (h, c)."""
        pre = self.input_product(x)
        out, h, c = apply_in_float32(LSTMSequence, pre, self.i2h.bias + self.h2h.bias, self.h2h.weight, *state)
        return out, (h, c)
