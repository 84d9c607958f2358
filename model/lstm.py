"""char-rnn's LSTM layer: one fused product for the four gates, in the order i, f, o, g.

    gates = i2h(x) + h2h(h)
    i, f, o = sigmoid(gates[0:3H]);  g = tanh(gates[3H:4H])
    c' = f * c + i * g
    h' = o * tanh(c')
"""
import torch
import torch.nn.functional as F
from torch import nn


def kernel_order(t: torch.Tensor) -> torch.Tensor:
    """Rows of a 4H-row tensor from char-rnn's gate order i, f, o, g to the kernels' i, f, g, o.
    It swaps the last two blocks, so it is its own inverse."""
    H = t.shape[0] // 4
    return torch.cat([t[:2 * H], t[3 * H:], t[2 * H:3 * H]])


class KernelOrder(torch.autograd.Function):
    """kernel_order of several tensors at once; the gradients go back through the same swap (a copy
    each), cheaper than index_select's backward (a zero tensor and a scatter-add per tensor)."""

    @staticmethod
    def forward(ctx, *tensors):
        return tuple(kernel_order(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        return tuple(None if g is None else kernel_order(g) for g in grads)


class LSTMSequence(torch.autograd.Function):
    """The recurrence of one layer over a whole sequence, time-major, with a hand-written backward.

    pre (T, B, 4H) holds the input products without bias and bias (4H) both biases, in the kernels'
    gate order i, f, g, o, as does w_hh (4H, H). Returns the outputs h_1..h_T (T, B, H) and the final
    h and c. The forward makes 7 calls per step (PyTorch's autograd would record about 15 nodes); the
    backward 5 per step, the gate derivatives that do not depend on the recurrence computed for all
    steps at once, and the weight gradient is one product over all T*B rows."""

    @staticmethod
    def forward(ctx, pre, bias, w_hh, h0, c0):
        T, B, G = pre.shape
        H = G // 4
        gates = torch.add(pre, bias)  # becomes the activated gates, kept for the backward
        hs, cs, tcs = pre.new_empty(T + 1, B, H), pre.new_empty(T + 1, B, H), pre.new_empty(T, B, H)
        hs[0], cs[0] = h0, c0
        w_t = w_hh.t()
        g_t, h_t, c_t, tc_t = gates.unbind(0), hs.unbind(0), cs.unbind(0), tcs.unbind(0)
        if_t, cand_t, o_t = (part.unbind(0) for part in gates.split([2 * H, H, H], dim=2))
        i_t, f_t = (part.unbind(0) for part in gates[:, :, :2 * H].split(H, dim=2))
        for t in range(T):
            g_t[t].addmm_(h_t[t], w_t)
            if_t[t].sigmoid_()
            cand_t[t].tanh_()
            o_t[t].sigmoid_()
            torch.mul(f_t[t], c_t[t], out=c_t[t + 1]).addcmul_(i_t[t], cand_t[t])
            torch.tanh(c_t[t + 1], out=tc_t[t])
            torch.mul(o_t[t], tc_t[t], out=h_t[t + 1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_hh)
        ctx.buffers = (gates, hs, cs, tcs)
        return hs[1:], hs[T], cs[T]

    @staticmethod
    def backward(ctx, d_out, d_hT, d_cT):
        (w_hh,) = ctx.saved_tensors
        gates, hs, cs, tcs = ctx.buffers
        del ctx.buffers
        T, B, G = gates.shape
        H = G // 4
        i, f, g, o = gates.split(H, dim=2)
        # the factors of the gate derivatives, for all steps at once:
        #   dc_t = dc_{t+1} * f_{t+1} + dh_t * A;  d(i, f, g)_pre = dc_t * P;  d o_pre = dh_t * Q
        A = torch.mul(tcs, tcs).neg_().add_(1).mul_(o)
        P = pre_factors = gates.new_empty(T, B, 3, H)
        torch.mul(g, torch.rsub(i, 1).mul_(i), out=pre_factors[:, :, 0])
        torch.mul(cs[:-1], torch.rsub(f, 1).mul_(f), out=pre_factors[:, :, 1])
        torch.mul(i, torch.mul(g, g).neg_().add_(1), out=pre_factors[:, :, 2])
        Q = torch.rsub(o, 1).mul_(o).mul_(tcs)
        d_gates = torch.empty_like(gates)
        d_ifg_t = d_gates[:, :, :3 * H].view(T, B, 3, H).unbind(0)
        d_o_t, d_g_t = d_gates[:, :, 3 * H:].unbind(0), d_gates.unbind(0)
        A_t, P_t, Q_t, f_t = A.unbind(0), P.unbind(0), Q.unbind(0), f.unbind(0)
        d_out_t = d_out.unbind(0) if d_out is not None else None
        dh = d_hT
        if d_out_t is not None:
            dh = d_out_t[T - 1] if dh is None else dh + d_out_t[T - 1]
        if dh is None:
            dh = hs.new_zeros(B, H)
        dc = d_cT
        for t in range(T - 1, -1, -1):
            dc = dh * A_t[t] if dc is None else torch.addcmul(dc, dh, A_t[t])
            torch.mul(dc.unsqueeze(1), P_t[t], out=d_ifg_t[t])
            torch.mul(dh, Q_t[t], out=d_o_t[t])
            dc.mul_(f_t[t])
            if t > 0 and d_out_t is not None:
                dh = torch.addmm(d_out_t[t - 1], d_g_t[t], w_hh)
            else:
                dh = torch.mm(d_g_t[t], w_hh)
        flat = d_gates.view(T * B, G)
        d_w = torch.mm(flat.t(), hs[:-1].reshape(T * B, H)) if ctx.needs_input_grad[2] else None
        d_bias = flat.sum(0) if ctx.needs_input_grad[1] else None
        return d_gates, d_bias, d_w, dh, dc


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
        return list(KernelOrder.apply(self.i2h.weight, self.h2h.weight, self.i2h.bias, self.h2h.bias))

    def sequence(self, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """The layer over a whole sequence: x (T, B) token ids (the input is their one-hot) or
        (T, B, input_size) -> outputs (T, B, H) and the final (h, c)."""
        w_ih, w_hh, b_ih, b_hh = self.kernel_weights()
        pre = F.embedding(x, w_ih.t()) if x.dim() == 2 else F.linear(x, w_ih)
        out, h, c = LSTMSequence.apply(pre, b_ih + b_hh, w_hh, *state)
        return out, (h, c)
