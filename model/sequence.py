"""Pieces shared by the hand-written sequence Functions of the cell files."""
from typing import Any

import torch


def apply_in_float32(function: type[torch.autograd.Function], *inputs: torch.Tensor) -> Any:
    """function.apply on float32 inputs with autocast off. Under bfloat16 autocast (-precision bf16)
    a layer's batched input product may arrive in bfloat16; the hand-written per-step recurrence,
    whose in-place updates need one dtype, stays float32."""
    device_type = inputs[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return function.apply(*inputs)
    with torch.autocast(device_type, enabled=False):
        return function.apply(*(t.float() for t in inputs))


def last_step_gradient(d_out: torch.Tensor | None, d_hT: torch.Tensor | None,
                       hs: torch.Tensor) -> tuple[tuple[torch.Tensor, ...] | None, torch.Tensor]:
    """For a sequence Function's backward: the per-step output gradients (or None) and the gradient
    reaching the last step's h, from the final state and the last output; hs is (T + 1, B, H)."""
    d_out_t = d_out.unbind(0) if d_out is not None else None
    dh = d_hT
    if d_out_t is not None:
        dh = d_out_t[-1] if dh is None else dh + d_out_t[-1]
    return d_out_t, hs.new_zeros(hs.shape[1:]) if dh is None else dh


class GatherColumns(torch.autograd.Function):
    """weight (G, V) and tokens (T, B) -> (T, B, G): each token's column of the weight, which is the
    product of the token's one-hot with weight.t(). A strided view of one index_select along the
    columns (a gather along rows of weight.t() reads every element from another cache line, and
    F.embedding's backward would go through more steps); the gradient is a scatter-add of rows."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(tokens)
        ctx.vocab_size = weight.shape[1]
        T, B = tokens.shape
        return weight.index_select(1, tokens.reshape(-1)).t().view(T, B, weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (tokens,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None
        rows = torch.ops.aten.embedding_dense_backward(grad.reshape(-1, grad.shape[-1]), tokens.reshape(-1),
                                                        ctx.vocab_size, -1, False)
        return rows.t(), None


def gather_columns(weight: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The one-hot input product of layer 1 for token ids (T, B), without the bias: (T, B, G)."""
    return GatherColumns.apply(weight, tokens)
