"""char-rnn's GRU layer (not nn.GRU: the reset gate acts on h before its product).

    z  = sigmoid(W_zx x + W_zh h)
    r  = sigmoid(W_rx x + W_rh h)
    h~ = tanh(W_x x + W_h (r * h))
    h' = z * h~ + (1 - z) * h
Every W is a Linear with bias. The three products of x share one Linear (i2h, rows z, r, h~) and
the two gate products of h another (h2h, rows z, r); h2h_candidate is W_h.
"""
from typing import Any

import torch
from torch import nn

from model.layer import Layer, LayerState
from model.sequence import apply_in_float32, last_step_gradient


class GRUSequence(torch.autograd.Function):
    """The recurrence of one layer over a whole sequence, time-major, with a hand-written backward.

    pre (T, B, 3H) holds the input products without bias (rows z, r, h~) and bias (3H) every bias
    (i2h's plus h2h's for z and r, plus h2h_candidate's for h~); w_zr is h2h's weight (2H, H), w_c
    h2h_candidate's (H, H). Returns the outputs h_1..h_T (T, B, H) and the final h. The new state is
    torch.lerp(h, h~, z) = h + z * (h~ - h), which is z * h~ + (1 - z) * h up to rounding. Forward
    and backward make 6 calls per step each; the derivative factors that do not depend on the
    recurrence are computed for all steps at once, and each weight gradient is one product over all
    T*B rows."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, bias: torch.Tensor, w_zr: torch.Tensor, w_c: torch.Tensor,
                h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T, B, G = pre.shape
        H = G // 3
        gates = torch.add(pre, bias, out=pre.new_empty(T, B, G))  # becomes z, r, h~
        hs, rh = pre.new_empty(T + 1, B, H), pre.new_empty(T, B, H)
        hs[0] = h0
        w_zr_t, w_c_t = w_zr.t(), w_c.t()
        zr_t, z_t, r_t, c_t = (part.unbind(0) for part in (gates[:, :, :2 * H], *gates.split(H, dim=2)))
        h_t, rh_t = hs.unbind(0), rh.unbind(0)
        for t in range(T):
            zr_t[t].addmm_(h_t[t], w_zr_t).sigmoid_()
            torch.mul(r_t[t], h_t[t], out=rh_t[t])
            c_t[t].addmm_(rh_t[t], w_c_t).tanh_()
            torch.lerp(h_t[t], c_t[t], z_t[t], out=h_t[t + 1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_zr, w_c, gates, hs, rh)
        return hs[1:], hs[T]

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_hT: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        w_zr, w_c, gates, hs, rh = ctx.saved_tensors
        T, B, G = gates.shape
        H = G // 3
        z, r, c = gates.split(H, dim=2)
        h = hs[:-1]
        # the factors of the derivatives, for all steps at once:
        #   (dz_pre, dc_pre) = dh * (P_z, P_c) = dh * ((h~ - h) z (1 - z), z (1 - h~^2));
        #   dr_pre = d(rh) * P_r = d(rh) * h r (1 - r);  dh_prev = dh * (1 - z) + d(rh) * r + dzr_pre @ w_zr
        one_minus_z = torch.rsub(z, 1)
        P_zc = gates.new_empty(T, B, 2, H)
        torch.sub(c, h, out=P_zc[:, :, 0]).mul_(z).mul_(one_minus_z)
        torch.mul(c, c, out=P_zc[:, :, 1]).neg_().add_(1).mul_(z)
        P_r = torch.rsub(r, 1).mul_(r).mul_(h)
        d_gates = torch.empty_like(gates)
        d_zc_t = d_gates.view(T, B, 3, H)[:, :, ::2].unbind(0)  # the z and h~ blocks, strided
        d_zr_t, d_r_t, d_c_t = (part.unbind(0) for part in (d_gates[:, :, :2 * H], *d_gates.split(H, dim=2)[1:]))
        P_zc_t, P_r_t, omz_t, r_t = P_zc.unbind(0), P_r.unbind(0), one_minus_z.unbind(0), r.unbind(0)
        d_out_t, dh = last_step_gradient(d_out, d_hT, hs)
        for t in range(T - 1, -1, -1):
            torch.mul(dh.unsqueeze(1), P_zc_t[t], out=d_zc_t[t])
            d_rh = torch.mm(d_c_t[t], w_c)
            torch.mul(d_rh, P_r_t[t], out=d_r_t[t])
            if t > 0 and d_out_t is not None:
                dh = torch.addcmul(d_out_t[t - 1], dh, omz_t[t])
            else:
                dh = dh * omz_t[t]
            dh.addcmul_(d_rh, r_t[t]).addmm_(d_zr_t[t], w_zr)
        flat = d_gates.view(T * B, G)
        d_w_zr = torch.mm(flat[:, :2 * H].t(), h.reshape(T * B, H)) if ctx.needs_input_grad[2] else None
        d_w_c = torch.mm(flat[:, 2 * H:].t(), rh.view(T * B, H)) if ctx.needs_input_grad[3] else None
        d_bias = flat.sum(0) if ctx.needs_input_grad[1] else None
        return d_gates, d_bias, d_w_zr, d_w_c, dh


class GRULayer(Layer):
    state_names = ("h",)
    kernel = None  # nn.GRU's kernel computes a different candidate, so there is none to use
    kernel_on_cpu = False

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.i2h = nn.Linear(input_size, 3 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 2 * hidden_size)
        self.h2h_candidate = nn.Linear(hidden_size, hidden_size)

    def step(self, input_sums: torch.Tensor, state: LayerState) -> LayerState:
        """One time step; input_sums is i2h(x), computed beforehand for all steps at once."""
        (h,) = state
        H = self.hidden_size
        z, r = torch.sigmoid(input_sums[:, :2 * H] + self.h2h(h)).chunk(2, dim=1)
        candidate = torch.tanh(input_sums[:, 2 * H:] + self.h2h_candidate(r * h))
        return (z * candidate + (1 - z) * h,)

    def sequence(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """The layer over a whole sequence: x (T, B) token ids (the input is their one-hot) or
        (T, B, input_size) -> outputs (T, B, H) and the final (h,)."""
        pre = self.input_product(x)
        bias = self.i2h.bias + torch.cat([self.h2h.bias, self.h2h_candidate.bias])
        out, h = apply_in_float32(GRUSequence, pre, bias, self.h2h.weight, self.h2h_candidate.weight, *state)
        return out, (h,)
