"""MusER's losses: the element regulariser and the per-element reconstruction loss.

`element_regularization_reference` is the regulariser in its plain form, the one to read
and to change; `element_regularization` is the fast form training uses (pairs i < j only,
one matrix product, a hand-derived backward), tested against the reference.
"""
from __future__ import annotations

import torch

from music.elements import ELEMENTS, N_ELEMENTS, NUMERIC_ELEMENTS, token_number


def element_regularization_reference(reduced: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The regulariser as the paper writes it, with plain autograd: per element k [7],

        L_k = mean over (i, j, t) of |tanh(z[k,i,t] - z[k,j,t]) - sign(x[k,i,t] - x[k,j,t])|

    over every ordered pair (i, j) of pieces in the batch and every step t. Readable and
    slow ([7, B, B, T] tensors); `element_regularization` computes the same values and
    gradients with a fraction of the memory. Change the loss here first, test the fast
    one against it, then change the fast one.
    """
    latent_diff = reduced[:, :, None, :] - reduced[:, None, :, :]
    target_diff = targets[:, :, None, :] - targets[:, None, :, :]
    return (torch.tanh(latent_diff) - torch.sign(target_diff).to(reduced.dtype)).abs().mean(dim=(1, 2, 3))


def value_tables(word2event: dict) -> list[list[float]]:
    """Per element, the musical value of each token index, for reg_target='value'.

    Token names such as 'Note_Pitch_60', 'Tempo_120', 'Beat_3' give their number. Tokens
    without one (0, 'CONTI', 'Bar') are placed below every number, in index order. Chord
    and type have no musical order, so their index is kept. Only the order matters: the
    regulariser looks at the sign of differences.
    """
    tables = []
    for field in ELEMENTS:
        events = word2event[field]
        size = len(events)
        if sorted(events) != list(range(size)):
            raise ValueError(f"word2event[{field!r}] indices are not 0..{size - 1}")
        if field not in NUMERIC_ELEMENTS:
            tables.append([float(i) for i in range(size)])
            continue
        numbers = {i: token_number(events[i]) for i in range(size)}
        without = [i for i in range(size) if numbers[i] is None]
        table = [0.0] * size
        for rank, i in enumerate(without):
            table[i] = float(rank - len(without))
        for i, number in numbers.items():
            if number is not None:
                table[i] = float(number)
        tables.append(table)
    return tables


def element_regularization(reduced: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-element regularisation loss [7], all batch pairs at once (fast form of
    `element_regularization_reference`).

    reduced, targets: [7, B, T]. Targets are real values, or integers (token indices) in
    a type wide enough for their differences (int16 below 2**14 takes the least memory).
    For element k:
        L_k = mean over (i, j, t) of |tanh(z[i,t] - z[j,t]) - sign(x[i,t] - x[j,t])|.
    The term is symmetric in (i, j) and zero for i = j, so only the pairs i < j are
    computed, and counted twice. All latent pair differences come from one product with a
    [pairs, B] matrix of +1/-1 (exact: a single rounding, as z[i] - z[j]), and
    tanh(d) = 2 sigmoid(2d) - 1 (the same function; much cheaper than tanh on CPU).
    """
    dtype = torch.promote_types(reduced.dtype, torch.float32)
    batch, length = reduced.shape[1:]
    with torch.autocast(reduced.device.type, enabled=False):
        pairs = _pair_matrix(batch, reduced.device, dtype)
        with torch.no_grad():
            if targets.is_floating_point():
                target_diff = torch.matmul(pairs, targets.to(dtype))
            else:               # integers: differences in their own (e.g. 16-bit) type
                i, j = torch.triu_indices(batch, batch, 1, device=targets.device)
                target_diff = targets.index_select(1, i) - targets.index_select(1, j)
            offset = target_diff.sign_().add_(1).to(dtype)                     # 1 + sign(dx)
        losses = _PairwiseRankLoss.apply(reduced.to(dtype), pairs, offset)
    return losses * (2.0 / (batch * batch * length))


def _pair_matrix(batch: int, device, dtype) -> torch.Tensor:
    """[B(B-1)/2, B]: row p has +1 at i and -1 at j for the p-th pair i < j."""
    i, j = torch.triu_indices(batch, batch, 1, device=device)
    rows = torch.arange(len(i), device=device)
    pairs = torch.zeros(len(i), batch, device=device, dtype=dtype)
    pairs[rows, i] = 1.0
    pairs[rows, j] = -1.0
    return pairs


class _PairwiseRankLoss(torch.autograd.Function):
    """sum over pairs p and steps t of |tanh(d[k,p,t]) - sign[k,p,t]|, d = pairs @ z[k],
    given offset = 1 + sign (overwritten). Forward and backward take a few in-place
    passes over the [7, pairs, T] tensor; autograd's own graph would keep and re-read
    several such tensors."""

    @staticmethod
    def forward(ctx, reduced, pairs, offset):
        s = torch.matmul(pairs, reduced * 2).sigmoid_()             # tanh(d) = 2 s - 1
        residual = offset.addcmul_(s, s.new_tensor(2.0), value=-1)    # sign - tanh(d)
        # d|tanh(d) - sign| / dd = -4 s (1 - s) sign(residual): kept without the -4.
        slope = s.addcmul_(s, s, value=-1).copysign_(residual)
        ctx.save_for_backward(slope, pairs)
        return residual.abs_().sum(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad):
        slope, pairs = ctx.saved_tensors
        # pairs^T @ slope: on CPU two index_add passes are about twice as fast as the
        # product (whose inner dimension is tiny); elsewhere the product is deterministic.
        if slope.device.type == "cpu":
            first, second = torch.triu_indices(pairs.shape[1], pairs.shape[1], 1)
            out = slope.new_zeros(slope.shape[0], pairs.shape[1], slope.shape[2])
            out.index_add_(1, first, slope).index_add_(1, second, slope, alpha=-1)
        else:
            out = torch.matmul(pairs.t(), slope)
        return out.mul_((-4 * grad)[:, None, None]), None, None


def reconstruction_losses(log_probs, y, mask, seq_len):
    """Per-element NLL and accuracy over each piece's first seq_len steps.

    log_probs: 7 tensors [B, T, V_k]; y [B, T, 8]; mask [B, T]; seq_len [B].
    Loss of element k: per sample, the mean NLL over its valid steps, averaged over the
    batch. Accuracy: correct / valid over the whole batch. Returns ([7], [7]).
    """
    batch, length = y.shape[:2]
    dtype = log_probs[0].dtype
    steps = torch.arange(length, device=y.device)
    valid = (steps < seq_len.to(y.device).view(-1, 1)).to(dtype) * mask.to(dtype)
    per_sample_count = valid.sum(1).clamp_min(1)
    total_count = valid.sum().clamp_min(1)
    losses, accuracies = [], []
    for k in range(N_ELEMENTS):
        target = y[..., k]
        nll = -log_probs[k].gather(-1, target.unsqueeze(-1)).squeeze(-1)
        losses.append(((nll * valid).sum(1) / per_sample_count).mean())
        correct = (log_probs[k].argmax(-1) == target).to(dtype)
        accuracies.append((correct * valid).sum() / total_count)
    return torch.stack(losses), torch.stack(accuracies)
