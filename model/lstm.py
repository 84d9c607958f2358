"""char-rnn's LSTM layer: one fused product for the four gates.

    gates = i2h(x) + h2h(h)
    i, f, o = sigmoid(gates[i, f, o rows]);  g = tanh(gates[g rows])
    c' = f * c + i * g
    h' = o * tanh(c')

char-rnn orders the gates' rows i, f, o, g; PyTorch's kernels (oneDNN, cuDNN) order them i, f, g, o.
The parameters are kept in the kernels' order (GateLinear), so that the kernel takes them as they
are, with no copy at each call; state_dict() gives and load_state_dict() takes char-rnn's order.
"""
import functools
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


def swap_gates(tensor: torch.Tensor) -> torch.Tensor:
    """A 4H-row tensor from one gate order to the other (char-rnn's i, f, o, g and the kernels' i, f,
    g, o): the swap is its own inverse."""
    return tensor.index_select(0, gate_swap(tensor.shape[0], tensor.device))


class GateLinear(nn.Linear):
    """An nn.Linear of the four gates' rows, stored in the kernels' order i, f, g, o, so that the
    fused kernel (and cuDNN's one weight buffer) takes the parameters as they are; its state_dict
    gives and takes char-rnn's order i, f, o, g, the order of checkpoints and Torch7 files."""

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in ("weight", "bias"):
            destination[prefix + name] = swap_gates(destination[prefix + name])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        for name in ("weight", "bias"):  # a tensor of another size is left for the usual size error
            given = state_dict.get(prefix + name)
            if isinstance(given, torch.Tensor) and given.dim() > 0 and given.shape[0] == self.out_features:
                state_dict[prefix + name] = swap_gates(given)
        super()._load_from_state_dict(state_dict, prefix, *args)


class LSTMSequence(torch.autograd.Function):
    """The recurrence of one layer over a whole sequence, time-major, with a hand-written backward.

    pre (T, B, 4H) holds the input products without bias, bias (4H) both biases, w_hh (4H, H) is
    h2h's weight, all in the kernels' gate order i, f, g, o. Returns the outputs h_1..h_T (T, B, H)
    and the final h and c. The forward makes 7 calls per step (autograd would record about 15
    nodes), the backward 6; the derivative factors that do not depend on the recurrence are
    computed for all steps at once, and the weight gradient is one product over all T*B rows."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, bias: torch.Tensor, w_hh: torch.Tensor, h0: torch.Tensor,
                c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T, B, G = pre.shape
        H = G // 4
        # becomes the activated gates; the g rows' tanh goes to cands first, so that one sigmoid
        # call takes all rows (the g rows' sigmoid is not used)
        gates = torch.add(pre, bias, out=pre.new_empty(T, B, G))
        hs, cs, tcs, cands = (pre.new_empty(T + 1, B, H), pre.new_empty(T + 1, B, H), pre.new_empty(T, B, H),
                              pre.new_empty(T, B, H))
        hs[0], cs[0] = h0, c0
        w_t = w_hh.t()
        g_t, h_t, c_t, tc_t, cand_t = gates.unbind(0), hs.unbind(0), cs.unbind(0), tcs.unbind(0), cands.unbind(0)
        i_t, f_t, g_rows_t, o_t = (part.unbind(0) for part in gates.split(H, dim=2))
        for t in range(T):
            g_t[t].addmm_(h_t[t], w_t)
            torch.tanh(g_rows_t[t], out=cand_t[t])
            g_t[t].sigmoid_()
            torch.mul(f_t[t], c_t[t], out=c_t[t + 1]).addcmul_(i_t[t], cand_t[t])
            torch.tanh(c_t[t + 1], out=tc_t[t])
            torch.mul(o_t[t], tc_t[t], out=h_t[t + 1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_hh, gates, cands, hs, cs, tcs)
        return hs[1:], hs[T], cs[T]

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_hT: torch.Tensor | None,
                 d_cT: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        w_hh, gates, g, hs, cs, tcs = ctx.saved_tensors
        T, B, G = gates.shape
        H = G // 4
        i, f, _, o = gates.split(H, dim=2)
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
        d_g_t, d_o_t, d_all_t = d_gates[:, :, 2 * H:3 * H].unbind(0), d_gates[:, :, 3 * H:].unbind(0), d_gates.unbind(0)
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
    cudnn_mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.i2h = GateLinear(input_size, 4 * hidden_size)
        self.h2h = GateLinear(hidden_size, 4 * hidden_size)

    def initialize(self) -> None:
        super().initialize()
        with torch.no_grad():
            # drawn in char-rnn's gate order, so that a seed gives the weights it gave when they were
            # kept in that order
            for p in (self.i2h.weight, self.i2h.bias, self.h2h.weight, self.h2h.bias):
                p.copy_(swap_gates(p))
            self.i2h.bias[self.hidden_size:2 * self.hidden_size] = 1.0  # remember more at first, as char-rnn does

    def step(self, input_gates: torch.Tensor, state: LayerState) -> LayerState:
        """One time step; input_gates is i2h(x), computed beforehand for all steps at once."""
        h, c = state
        H = self.hidden_size
        gates = input_gates + self.h2h(h)
        i, f, _, o = torch.sigmoid(gates).chunk(4, dim=1)  # one call for the three gates; the g rows' is not used
        g = torch.tanh(gates[:, 2 * H:3 * H])
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c

    def sequence(self, x: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """The layer over a whole sequence: x (T, B) token ids (the input is their one-hot) or
        (T, B, input_size) -> outputs (T, B, H) and the final (h, c)."""
        pre = self.input_product(x)
        out, h, c = apply_in_float32(LSTMSequence, pre, self.i2h.bias + self.h2h.bias, self.h2h.weight, *state)
        return out, (h, c)
