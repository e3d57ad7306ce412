"""One LSTM kernel for inference and training: PyTorch's cell equations (gate order i, f, g,
o; zero initial state) over packed input projections, one step per time step.

torch's CPU LSTM under autograd slices its packed input once per time step, and the backward
of each slice zero-fills a gradient as large as the whole input: quadratic in the batch's
length. This kernel cuts per-step views once (one backward node), does the input projection of
all tokens in one matrix product, and has its own backward pass. Inference runs the same
forward (`_steps`) and keeps nothing for a backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from annotator.tagging.packed import Packing


def direction_weights(rnn: nn.LSTM, layer: int, suffix: str):
    """(W_ih, W_hh, b_ih + b_hh) of one LSTM layer and direction ('' or '_reverse')."""
    w_ih = getattr(rnn, f"weight_ih_l{layer}{suffix}")
    w_hh = getattr(rnn, f"weight_hh_l{layer}{suffix}")
    bias = (
        getattr(rnn, f"bias_ih_l{layer}{suffix}") + getattr(rnn, f"bias_hh_l{layer}{suffix}")
        if rnn.bias
        else None
    )
    return w_ih, w_hh, bias


def _steps(
    gx: torch.Tensor, w_hh: torch.Tensor, sizes: Sequence[int], order: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recurrence over packed input projections ``gx`` ``[N, 4H]``, steps taken in `order`.

    Returns ``(h, activations, c, tanh(c))``, packed like ``gx``; the activations are
    sigmoid(i), sigmoid(f), tanh(g), sigmoid(o). A step with more rows than the one before it
    (the backward direction, where sentences join at their last token) starts those rows from
    zero state.
    """
    n_rows, hidden = gx.size(0), w_hh.size(1)
    acts = gx.new_empty(n_rows, 4 * hidden)
    cells = gx.new_empty(n_rows, hidden)
    tanh_cells = gx.new_empty(n_rows, hidden)
    out = gx.new_empty(n_rows, hidden)
    w = w_hh.t()
    # per-step views, cut once
    gx_t, acts_t, cells_t, tanh_t, out_t = (
        x.split(list(sizes)) for x in (gx, acts, cells, tanh_cells, out)
    )
    previous = None
    for t in order:
        n = sizes[t]
        if previous is None:
            gates = gx_t[t]
        else:
            m = min(n, sizes[previous])
            if m == n:
                gates = torch.addmm(gx_t[t], out_t[previous][:m], w)
            else:  # rows m.. start here from zero state
                gates = gx_t[t].clone()
                gates[:m].addmm_(out_t[previous], w)
        a = acts_t[t]
        torch.sigmoid(gates, out=a)
        i, f, g, o = a.chunk(4, 1)
        torch.tanh(gates.chunk(4, 1)[2], out=g)
        c = torch.mul(i, g, out=cells_t[t])
        if previous is not None:
            c[:m].addcmul_(f[:m], cells_t[previous][:m])
        torch.mul(o, torch.tanh(c, out=tanh_t[t]), out=out_t[t])
        previous = t
    return out, acts, cells, tanh_cells


def _order(sizes: Sequence[int], reverse: bool) -> list[int]:
    return list(range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes)))


class _LSTMDirection(torch.autograd.Function):
    """One LSTM direction over packed input projections ``[N, 4H]`` (plus ``W_hh``) -> ``h`` ``[N,
    H]``.

    ``sizes`` are the packed batch sizes (non-increasing); the backward direction processes the
    steps last to first.  The backward pass runs the recurrence for the state gradients step by
    step, with the activation derivatives computed for all rows at once, and gets ``dW_hh`` from
    one matrix product over all steps instead of one small product (and one gradient
    accumulation) per step.
    """

    @staticmethod
    def forward(ctx, gx: torch.Tensor, w_hh: torch.Tensor, sizes: tuple[int, ...], reverse: bool):
        order = _order(sizes, reverse)
        out, acts, cells, tanh_cells = _steps(gx, w_hh, sizes, order)
        # the row whose state each row read (-1: zero state)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        prev_row = np.full(gx.size(0), -1, dtype=np.int64)
        for k in range(1, len(order)):
            t, p = order[k], order[k - 1]
            m = min(sizes[t], sizes[p])
            prev_row[offsets[t] : offsets[t] + m] = offsets[p] + np.arange(m)
        ctx.save_for_backward(w_hh, acts, cells, tanh_cells, out)
        ctx.sizes, ctx.order, ctx.prev_row = sizes, order, prev_row
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w_hh, acts, cells, tanh_cells, out = ctx.saved_tensors
        sizes, order, prev_row = ctx.sizes, ctx.order, ctx.prev_row
        hidden = w_hh.size(1)
        n_rows = acts.size(0)
        has_prev = torch.from_numpy(np.flatnonzero(prev_row >= 0)).to(acts.device)
        source = torch.from_numpy(prev_row[prev_row >= 0]).to(acts.device)
        h_prev = acts.new_zeros(n_rows, hidden)
        c_prev = acts.new_zeros(n_rows, hidden)
        h_prev[has_prev] = out[source]
        c_prev[has_prev] = cells[source]
        i, f, g, og = acts.chunk(4, 1)
        # d(gates)/d(state) factors for all rows at once
        to_cell = og * (1 - tanh_cells * tanh_cells)  # dc += dh * to_cell
        to_o = tanh_cells * og * (1 - og)  # dz_o = dh * to_o
        to_ifg = torch.stack(
            [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 1
        )  # dz = dc * .
        dgates = grad_out.new_empty(acts.shape)
        dh_carry = grad_out.new_zeros(grad_out.shape)  # from the step that read this row's state
        dc_carry = grad_out.new_zeros(grad_out.shape)
        grad_t, dh_t, dc_t, to_cell_t, to_o_t, to_ifg_t, f_t, d_t = (
            x.split(sizes) for x in (grad_out, dh_carry, dc_carry, to_cell, to_o, to_ifg, f, dgates)
        )
        for k in range(len(order) - 1, -1, -1):
            t = order[k]
            n = sizes[t]
            dh = grad_t[t] + dh_t[t]
            dc = torch.addcmul(dc_t[t], dh, to_cell_t[t])
            d = d_t[t]
            torch.mul(dh, to_o_t[t], out=d[:, 3 * hidden :])
            torch.mul(dc.unsqueeze(1), to_ifg_t[t], out=d[:, : 3 * hidden].view(n, 3, hidden))
            if k:
                p = order[k - 1]
                m = min(n, sizes[p])
                torch.mm(d[:m], w_hh, out=dh_t[p][:m])
                torch.mul(dc[:m], f_t[t][:m], out=dc_t[p][:m])
        return dgates, dgates.t().mm(h_prev), None, None


def lstm_direction(
    gx: torch.Tensor, w_hh: torch.Tensor, sizes: Sequence[int], reverse: bool
) -> torch.Tensor:
    """One direction's ``h`` ``[N, H]``: differentiable where autograd is on, else the same
    forward keeping nothing for a backward pass."""
    sizes = tuple(int(n) for n in sizes)
    if torch.is_grad_enabled() and (gx.requires_grad or w_hh.requires_grad):
        return _LSTMDirection.apply(gx, w_hh, sizes, reverse)
    return _steps(gx, w_hh, sizes, _order(sizes, reverse))[0]


def lstm_packed(
    rnn: nn.LSTM,
    x: torch.Tensor,
    sizes: Sequence[int],
    rows: torch.Tensor | None = None,
    exact_state: bool = False,
) -> torch.Tensor:
    """``rnn(PackedSequence(x, sizes))[0].data`` (zero initial state), computed step by step.

    With `rows`, `x` holds distinct input rows and ``rows[p]`` is packed row p's: the first
    layer's input projection (most of the arithmetic) is then done once per distinct row.
    `exact_state`: under autocast, only the input projections (the large matrix products) run
    in low precision; the recurrence and its cell state stay in the weights' precision, so
    that rounding does not accumulate along a sentence.
    """
    directions = [("", False), ("_reverse", True)] if rnn.bidirectional else [("", False)]
    for layer in range(rnn.num_layers):
        outputs = []
        for suffix, reverse in directions:
            w_ih, w_hh, bias = direction_weights(rnn, layer, suffix)
            gx = F.linear(x, w_ih, bias)
            if layer == 0 and rows is not None:
                gx = torch.index_select(gx, 0, rows)
            if exact_state and gx.dtype != w_hh.dtype:
                with torch.autocast(gx.device.type, enabled=False):
                    outputs.append(lstm_direction(gx.to(w_hh.dtype), w_hh, sizes, reverse))
            else:
                outputs.append(lstm_direction(gx, w_hh, sizes, reverse))
        x = torch.cat(outputs, 1) if len(outputs) > 1 else outputs[0]
        if layer < rnn.num_layers - 1 and rnn.dropout and rnn.training:
            x = F.dropout(x, rnn.dropout, True)
    return x


def char_encode(component: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Flair's CharacterEmbeddings for a batch's unique words ``[U, 2H]``, as
    ``CharComponent.encode`` computes them, through this kernel.

    The forward LSTM's state after the last character, and the backward LSTM's output at the
    same position: its state after reading the last character alone (Flair's quirk), one step.
    """
    rnn = component.char_rnn
    lengths = inputs["lengths"].numpy()
    chars = inputs["chars"]
    order = np.argsort(-lengths, kind="stable")
    packing = Packing.of(lengths[order])
    device = chars.device
    ids = chars[
        torch.from_numpy(order[packing.sentence]).to(device),
        torch.from_numpy(packing.step).to(device),
    ]
    embedded = component.char_embedding(ids)  # packed [total chars, D]
    w_ih, w_hh, bias = direction_weights(rnn, 0, "")
    states = lstm_direction(F.linear(embedded, w_ih, bias), w_hh, packing.sizes.tolist(), False)
    last = torch.from_numpy(packing.last_rows).to(device)
    w_ih, w_hh, bias = direction_weights(rnn, 0, "_reverse")
    backward = lstm_direction(F.linear(embedded[last], w_ih, bias), w_hh, [last.numel()], True)
    unsort = np.empty_like(order)
    unsort[order] = np.arange(order.size)
    return torch.cat([states[last], backward], 1)[torch.from_numpy(unsort).to(device)]
